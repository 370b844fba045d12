"""Multi-label data: annotation tables, clip labels from boxes, soundscapes, attention pooling, LWLRAP."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from echoengine import catalog
from echoengine.clips import box_labels, crop_around
from echoengine.config import EchoConfig
from echoengine.errors import DataError

BOX_COLUMNS = ["start", "end", "low_freq", "high_freq", "label", "positive"]


def _audio(path, seconds=20.0, rate=16000):
    sf.write(path, np.zeros(int(seconds * rate), np.float32), rate)
    return path


def test_raven_audacity_and_csv_tables_become_boxes_with_their_recordings(tmp_path):
    _audio(tmp_path / "site1.flac")
    _audio(tmp_path / "site2.wav")
    (tmp_path / "site1.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
        "1\tSpectrogram 1\t1\t1.5\t3.0\t2000\t6000\tTurdus merula\n"
        "1\tWaveform 1\t1\t1.5\t3.0\t2000\t6000\tTurdus merula\n"  # Raven's second view of selection 1
        "2\tSpectrogram 1\t1\t10.0\t12.5\t500\t900\tgrenouille été\n", encoding="utf-8")
    (tmp_path / "site2.txt").write_text("0.5\t1.0\t蛙\n\\\t300.0\t800.0\n4.0\t6.0\towl\n", encoding="utf-8")
    boxes = catalog.read_annotations(tmp_path)
    assert boxes.columns.tolist() == catalog.ANNOTATION_COLUMNS
    site1 = boxes[boxes["path"].str.endswith("site1.flac")]
    assert site1[["start", "end", "label"]].values.tolist() == [[1.5, 3.0, "Turdus merula"],
                                                                [10.0, 12.5, "grenouille été"]]
    site2 = boxes[boxes["path"].str.endswith("site2.wav")].reset_index(drop=True)
    assert site2["label"].tolist() == ["蛙", "owl"] and site2.loc[0, "low_freq"] == 300.0
    assert np.isnan(site2.loc[1, "low_freq"]) and boxes["positive"].all()

    csv = tmp_path / "rfcx.csv"
    csv.write_text("recording_id,species_id,songtype_id,t_min,f_min,t_max,f_max\n"
                   "site1,3,1,2.0,1000.0,4.5,5000.0\nsite2,7,1,0.0,100.0,1.0,900.0\nmissing,1,1,0,0,1,1\n")
    negatives = catalog.read_annotations(csv, positive=False)  # the unknown recording is left out, with a warning
    assert negatives[["label", "start", "end", "positive"]].values.tolist() == [["3", 2.0, 4.5, False],
                                                                                ["7", 0.0, 1.0, False]]
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("file,species,begin,stop\nsite1.flac,owl,1,2\n")
    mapped = catalog.read_annotations(renamed, columns={"label": "species", "start": "begin", "end": "stop"})
    assert mapped[["label", "start", "end"]].values.tolist() == [["owl", 1.0, 2.0]]
    with pytest.raises(DataError, match=r"rfcx_bad\.csv.*no column 'species_id'"):
        (tmp_path / "rfcx_bad.csv").write_text("recording_id,t_min,t_max\nsite1,1,2\n")
        catalog.read_annotations(tmp_path / "rfcx_bad.csv")


def test_window_labels_against_hand_computed_overlaps():
    boxes = pd.DataFrame([
        [4.0, 6.0, 0, 0, "owl", True],     # 1 s in window [0, 5), 1 s in [5, 10)
        [9.8, 10.0, 0, 0, "frog", True],   # a 0.2 s call, wholly inside [5, 10)
        [12.0, 13.0, 0, 0, "owl", False],  # verified: no owl here
        [14.8, 15.2, 20000, 22000, "bat", True],  # 0.2 s in each of [10, 15) and [15, 20); ultrasonic
    ], columns=BOX_COLUMNS)
    starts = np.array([0.0, 5.0, 10.0, 15.0])
    classes = ["owl", "frog", "bat"]
    labels = box_labels(boxes, starts, length=5.0, classes=classes, unlabeled="ignore")
    nan = np.nan
    np.testing.assert_array_equal(labels, [[1, nan, nan], [1, 1, nan], [0, nan, 1], [nan, nan, 1]])
    strict = box_labels(boxes, starts, length=5.0, classes=classes, min_overlap=1.5, min_fraction=0.9)
    np.testing.assert_array_equal(strict, [[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]])  # only the frog fits whole
    banded = box_labels(boxes, starts, length=5.0, classes=classes, band=(20.0, 13000.0))
    assert banded[:, 2].tolist() == [0, 0, 0, 0]  # the bat's box is above the model's band
    # a positive wins over a negative of the same class in one window
    both = pd.concat([boxes, pd.DataFrame([[12.5, 14.0, 0, 0, "owl", True]], columns=BOX_COLUMNS)])
    assert box_labels(both, starts, length=5.0, classes=classes)[2, 0] == 1


def test_training_crops_hold_their_box():
    rng = np.random.default_rng(0)
    for _ in range(200):
        start = float(rng.uniform(0, 55))
        end = start + float(rng.uniform(0.1, 8))
        crop = crop_around(start, min(end, 60.0), length=5.0, duration=60.0, jitter=1.0, rng=rng)
        assert 0.0 <= crop <= 55.0
        if end - start <= 5.0 and end <= 60.0:
            assert crop <= start + 1e-9 and crop + 5.0 >= end - 1e-9


def test_lwlrap_equals_sklearn_on_random_inputs():
    from sklearn.metrics import label_ranking_average_precision_score

    from echoengine.evaluation import lwlrap

    rng = np.random.default_rng(0)
    for draw in range(20):
        truth = (rng.random((40, 6)) < 0.3).astype(int)
        truth[truth.sum(axis=1) == 0, rng.integers(6)] = 1
        scores = rng.random((40, 6))
        if draw % 2:
            scores = np.round(scores, 1)  # many ties: a tie ranks the label low, as scikit-learn does
        overall, per_class, weights = lwlrap(truth, scores)
        expected = label_ranking_average_precision_score(truth, scores, sample_weight=truth.sum(axis=1))
        assert overall == pytest.approx(expected, abs=1e-12)
        assert np.nansum(per_class * weights) == pytest.approx(overall)


def test_a_class_with_no_known_label_in_the_evaluated_windows_has_no_score_not_an_error():
    """With data.unlabeled = "ignore" (a review export's recordings), a class may have no box, positive or
    negative, in the test recordings: its precision, recall and F1 are NaN, and the rest is scored."""
    from echoengine.metrics import multilabel_metrics

    truth = np.array([[1, np.nan], [0, np.nan], [1, np.nan]])
    metrics = multilabel_metrics(truth, np.array([[.9, .2], [.3, .8], [.6, .6]]), ["owl", "wren"])
    owl, wren = metrics["per_class"].to_dict("records")
    assert owl["f1"] == 1.0 and owl["ap"] == 1.0 and metrics["macro_f1"] == 1.0
    assert np.isnan(wren["f1"]) and np.isnan(wren["precision"]) and wren["support"] == 0


def test_the_attention_head_learns_events_at_any_time():
    from echoengine.models.heads import AttentionHead

    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def batch(n=64, steps=24, features=8):
        x = torch.randn(n, features, steps) * 0.5
        y = torch.zeros(n, 3)
        for i in range(n):
            for c in range(3):
                if rng.random() < 0.4:  # a 2-step event of class c somewhere in the clip
                    t = int(rng.integers(0, steps - 2))
                    x[i, c, t : t + 2] += 3.0
                    y[i, c] = 1
        return x, y

    head = AttentionHead(8, 3)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        x, y = batch()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, y = batch(400)
    with torch.no_grad():
        accuracy = float(((head(x) > 0) == (y > 0.5)).float().mean())
        mean_pool = float(((x[:, :3].mean(dim=2) > x[:, :3].mean()) == (y > 0.5)).float().mean())
    assert accuracy > 0.95 > mean_pool, (accuracy, mean_pool)


def test_spinetail_boxes_become_the_right_labels(soundscapes):
    boxes = catalog.read_annotations(soundscapes / "spinetail.txt")
    assert len(boxes) == 18 and boxes["path"].str.endswith("spinetail.flac").all()
    assert sorted(boxes["label"].value_counts().items()) == [("CRER", 4), ("SP", 14)]
    assert boxes["low_freq"].notna().all() and (boxes["high_freq"] > boxes["low_freq"]).all()
    labels = box_labels(boxes, np.array([0.0, 5.0, 10.0, 15.0]), length=5.0, classes=["SP", "CRER"])
    # by hand from spinetail.txt: SP calls in every 5 s window; CRER at 0.5-3.0, 5.2-7.9, 11.3-13.8, 16.4-18.7 s
    assert labels.tolist() == [[1, 1], [1, 1], [1, 1], [1, 1]]
    # on a 2.5 s grid, the window at 2.5-5 s holds SP (2.72-3.22) and CRER's end (0.51-3.04: 0.54 s), and the
    # one at 12.5-15 s SP (12.66-12.94) and CRER (11.33-13.75: 1.25 s); the one at 13.75-16.25 s no CRER
    grid = box_labels(boxes, np.array([2.5, 12.5, 13.75]), length=2.5, classes=["SP", "CRER"])
    assert grid.tolist() == [[1, 1], [1, 1], [1, 0]]


def test_multilabel_dataset_items_carry_their_boxes(tmp_path):
    from echoengine.dataset import MultiLabelDataset

    path = str(_audio(tmp_path / "rec.wav", seconds=30.0).absolute())
    recordings = pd.DataFrame({"path": [path], "label": "", "group": "rec", "duration": [30.0]})
    boxes = pd.DataFrame({"path": path, "start": [2.0, 20.0], "end": [3.0, 21.0], "low_freq": np.nan,
                          "high_freq": np.nan, "label": ["owl", "frog"], "positive": True})
    config = EchoConfig().replace(audio={"sample_rate": 16000}, frontend={"n_mels": 32, "image_height": 32,
                                                                          "image_width": 32, "fmax": 7000.0})
    train = MultiLabelDataset(recordings, boxes, ["frog", "owl"], config, train=True)
    assert len(train) == 3  # a crop per box and one background crop
    for variant in range(5):
        assert train[(0, variant)][1].tolist() == [0.0, 1.0]  # the owl's crop holds the owl
        assert train[(1, variant)][1].tolist() == [1.0, 0.0]
    evaluation = MultiLabelDataset(recordings, boxes, ["frog", "owl"], config, train=False)
    targets = [evaluation[i][1].tolist() for i in range(len(evaluation))]
    assert targets == [[0, 1], [0, 0], [0, 0], [0, 0], [1, 0], [0, 0]]  # 6 windows of 5 s


def test_masked_bce_leaves_out_unknown_labels():
    from echoengine.training import MaskedBCE

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    known = MaskedBCE()(logits, torch.tensor([[1.0, 0.0, float("nan")]]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], torch.tensor([[1.0, 0.0]]))
    assert float(known) == pytest.approx(float(expected))


def test_mixed_soundscapes_and_their_raven_tables_agree(synthetic_dataset, tmp_path):
    from echoengine.config import AudioConfig
    from echoengine.mix import mix_soundscapes

    clips, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), AudioConfig(sample_rate=16000))
    written = mix_soundscapes(clips, tmp_path, count=4, duration=12.0, events=(2, 3), snr=(0.0, 10.0),
                              config=AudioConfig(sample_rate=16000), seed=1)
    assert written.groupby("path").size().between(2, 3).all() and len(written.groupby("path")) == 4
    read = catalog.read_annotations(tmp_path).sort_values(["path", "start"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(read, written.sort_values(["path", "start"]).reset_index(drop=True),
                                  check_dtype=False)
    assert ((read["end"] <= 12.0) & (read["start"] >= 0) & (read["high_freq"] > read["low_freq"])).all()
    y, rate = sf.read(read.loc[0, "path"])
    assert rate == 16000 and len(y) == 12 * 16000


def test_multilabel_train_calibrate_evaluate_and_cv_from_the_command_line(synthetic_dataset, tmp_path):
    import json

    from echoengine.cli import main

    config = EchoConfig().replace(
        audio={"sample_rate": 16000}, frontend={"n_mels": 64, "image_height": 64, "image_width": 64,
                                                "hop_length": 400, "n_fft": 1024, "fmax": 7000.0},
        data={"val_fraction": 0.25, "test_fraction": 0.25},
    )
    config_file = config.save(tmp_path / "small.toml")
    assert main(["mix", str(synthetic_dataset), "--out", str(tmp_path / "mix"), "--count", "12", "--duration", "12",
                 "--events", "1-3", "--test-fraction", "0.3", "--config", str(config_file),
                 "--group-regex", r"^(.+_rec\d+)_"]) == 0
    train = ["--config", str(config_file), "--backbone", "small_cnn", "--head", "attention", "--multilabel",
             "--epochs", "2", "--lr", "1e-3", "--no-cache", "--quiet"]
    assert main(["train", str(tmp_path / "mix" / "train"), "--out", str(tmp_path / "bundle"), *train]) == 0
    metrics = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    assert set(metrics) >= {"window", "recording"} and 0 <= metrics["recording"]["lwlrap"] <= 1
    assert (tmp_path / "bundle" / "annotations.csv").is_file()
    assert main(["calibrate", str(tmp_path / "bundle"), str(tmp_path / "mix" / "train"), "--no-cache"]) == 0
    assert (tmp_path / "bundle" / "thresholds.csv").is_file()
    assert main(["evaluate", str(tmp_path / "bundle"), str(tmp_path / "mix" / "test"), "--no-cache",
                 "--out", str(tmp_path / "report")]) == 0
    per_class = pd.read_csv(tmp_path / "report" / "per_class_recording.csv")
    thresholds = pd.read_csv(tmp_path / "bundle" / "thresholds.csv")
    assert per_class["threshold"].round(4).tolist() == thresholds["threshold"].round(4).tolist()
    assert main(["cv", str(tmp_path / "mix" / "train"), "--folds", "2", "--out", str(tmp_path / "cv"), *train]) == 0
    summary = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert len(summary["folds"]) == 2 and "recording_lwlrap" in summary["mean"]
    assert (tmp_path / "cv" / "fold1" / "weights.pt").is_file()


def test_annotation_edge_cases(tmp_path):
    from echoengine import formats

    audio_dir = tmp_path / "audio" / "site"
    audio_dir.mkdir(parents=True)
    _audio(audio_dir / "rec.A.flac")
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "rec.A.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tSpecies\n1\tSpectrogram 1\t1\t2.0\t2.0\towl\n")
    boxes = catalog.read_annotations(tables, audio_dir=tmp_path / "audio")  # found below audio_dir, by its stem
    assert boxes["path"].tolist() == [str((audio_dir / "rec.A.flac").absolute())]
    # a point label is held by the window it falls in
    assert box_labels(boxes, np.array([0.0, 2.0, 5.0]), length=2.0, classes=["owl"]).ravel().tolist() == [0, 1, 0]
    # only our own score suffix is split off an Audacity label
    import io

    track = formats.read_audacity(io.StringIO("1.0\t2.0\tcall type (2)\n3.0\t4.0\towl (0.8125)\n"))
    assert track["label"].tolist() == ["call type (2)", "owl"] and track["score"].iloc[1] == 0.8125
    (tables / "blank.csv").write_text("file,label,start,end\nrec.A.flac,owl,,3\n")
    with pytest.raises(DataError, match="no begin or end time"):
        catalog.read_annotations(tables / "blank.csv", audio_dir=tmp_path / "audio")


def test_multilabel_crops_have_their_own_cache_keys(tmp_path):
    from echoengine.cache import FeatureCache
    from echoengine.dataset import ClipDataset, MultiLabelDataset

    path = str(_audio(tmp_path / "rec.wav", seconds=30.0).absolute())
    recordings = pd.DataFrame({"path": [path], "label": "", "group": "rec", "duration": [30.0]})
    boxes = pd.DataFrame({"path": path, "start": [2.0, 20.0], "end": [3.0, 21.0], "low_freq": np.nan,
                          "high_freq": np.nan, "label": ["owl", "owl"], "positive": True})
    config = EchoConfig().replace(audio={"sample_rate": 16000}, frontend={"fmax": 7000.0},
                                  data={"cache_dir": str(tmp_path / "cache")})
    cache = FeatureCache(config.data.cache_dir, config)
    multi = MultiLabelDataset(recordings, boxes, ["owl"], config, train=True, cache=cache)
    single = ClipDataset(recordings.assign(label="owl"), ["owl"], config, train=True, cache=cache)
    keys = {multi.cache_key(row, start, 0) for row, start in multi.items}
    assert len(keys) == 3 and single.cache_key(0, -1, 0) not in keys
    moved = MultiLabelDataset(recordings, boxes.iloc[::-1], ["owl"], config, train=True, cache=cache)
    assert {moved.cache_key(row, start, 0) for row, start in moved.items} == keys  # keyed by box, not by order
