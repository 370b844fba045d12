"""Single-label and multi-label data through one path: training run, cross-validation, evaluation and report."""

import json

import numpy as np
import pandas as pd
import pytest

import echoengine as ee
from echoengine import catalog
from echoengine.evaluation import format_report
from echoengine.labelkind import LEVELS, MULTI_LABEL, SINGLE_LABEL, label_kind
from echoengine.synthetic import make_dataset

GROUPS = r"^(.+_rec\d+)_"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Labelled synthetic clips (single-label) and soundscapes mixed from them with Raven tables (multi-label)."""
    from echoengine.mix import mix_soundscapes

    root = tmp_path_factory.mktemp("labelkinds")
    clips = make_dataset(root / "clips", classes=2, files_per_class=12, seed=0)
    config = ee.EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"learning_rate": 1e-3, "device": "cpu", "epochs": 1, "patience": 1},
        augment={"variants": 1, "noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0},
        audio={"sample_rate": 16000, "clip_seconds": 2.0},
        frontend={"n_fft": 512, "hop_length": 512, "n_mels": 32, "image_height": 32, "image_width": 32,
                  "fmax": 7000.0},
        data={"batch_size": 4, "group_regex": GROUPS, "val_fraction": 0.25, "test_fraction": 0.25},
    )
    scanned, _ = catalog.scan(catalog.load_catalog(clips, config.data), config.audio)
    mix_soundscapes(scanned, root / "mix", count=6, duration=6.0, events=(1, 2), snr=(0.0, 10.0),
                    config=config.audio, seed=1)
    multilabel = config.replace(model={"multilabel": True}, data={"group_regex": ""})
    return {False: (clips, config), True: (root / "mix", multilabel)}


@pytest.mark.parametrize("multilabel", [False, True], ids=["single-label", "multi-label"])
def test_both_label_kinds_train_cross_validate_and_evaluate_through_one_path(datasets, multilabel, tmp_path,
                                                                              one_torch_thread):
    data, config = datasets[multilabel]
    kind = label_kind(multilabel=multilabel)
    said: list[str] = []
    run = ee.train(data, config=config, out=tmp_path / "bundle", log=said.append)
    assert said[0].startswith(f"{kind.training} small_cnn + linear head on {len(run.classes)} classes")
    assert said[0].endswith(f"test {kind.items}") and ("boxes" in said[0]) == multilabel
    saved = json.loads((tmp_path / "bundle" / "metrics.json").read_text())
    assert list(saved) == list(kind.summary(run.metrics)) and saved["evaluated_on"].startswith("test part of")
    tables = {"per_class_window.csv", "per_class_recording.csv"} if multilabel else {"per_class.csv"}
    assert tables <= {p.name for p in (tmp_path / "bundle").iterdir()}
    assert (tmp_path / "bundle" / "annotations.csv").is_file() == multilabel
    assert (tmp_path / "bundle" / "plots" / "confusion.png").is_file() != multilabel
    assert run.report.endswith(format_report(run.metrics, kind=kind))

    out = tmp_path / "cv"
    summary = ee.cross_validate(data, config=config, out=out, folds=2, log=said.append).summary
    assert list(pd.read_csv(out / "folds.csv").columns) == list(kind.fold_columns)
    folds = pd.read_csv(out / "folds.csv")
    for k in range(2):
        fold = json.loads((out / f"fold{k}" / "metrics.json").read_text())
        assert summary["folds"][k] == {"fold": k, **kind.fold_row(fold)}
        splits = pd.read_csv(out / f"fold{k}" / "splits.csv")
        assert set(splits.loc[splits["part"] == "test", "path"]) == set(folds.loc[folds["fold"] == k, "path"])
        assert not set(splits.loc[splits["part"] != "test", "group"]) & set(folds.loc[folds["fold"] == k, "group"])
    assert list(summary["mean"]) == list(kind.fold_row(fold)) == list(summary["std"])
    assert ("pooled_out_of_fold" in summary) != multilabel
    assert (out / "oof_predictions.csv").is_file() != multilabel
    said.clear()
    resumed = ee.cross_validate(data, config=config, out=out, folds=2, resume=True, log=said.append).summary
    assert said[1:] == ["fold 0: finished before, kept", "fold 1: finished before, kept"]
    assert resumed["mean"] == summary["mean"]

    evaluation = ee.evaluate(tmp_path / "bundle", data, out=tmp_path / "evaluation")
    assert evaluation.multilabel == multilabel and evaluation.report == format_report(evaluation.metrics, kind=kind)
    assert tables <= {p.name for p in (tmp_path / "evaluation").iterdir()}


def test_a_file_is_the_mean_of_its_windows_and_a_recording_its_best_window():
    table = pd.DataFrame({"path": ["a.wav", "b.wav", "c.wav"], "label": ["x", "y", "x"]})
    windows = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]])
    rows = np.array([0, 0, 1, 2])
    targets = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [np.nan, 0.0]])
    single, files = SINGLE_LABEL.score(table, ["x", "y"], windows, rows, targets, skipped=1, models=2)
    np.testing.assert_allclose(files, [[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert single["accuracy"] == 1.0 and single["skipped_unknown_labels"] == 1 and single["models"] == 2
    multi, best = MULTI_LABEL.score(table, ["x", "y"], windows, rows, targets, thresholds=np.array([0.5, 0.7]))
    np.testing.assert_allclose(best, [[0.9, 0.5], [0.2, 0.8], [0.6, 0.4]])
    assert list(multi) == list(LEVELS) and multi["window"]["samples"] == 4 and multi["recording"]["samples"] == 3
    # recording a holds y (its second window), scored 0.5: under y's threshold, so y's recall is 1/2
    assert multi["recording"]["per_class"].set_index("class").loc["y", "recall"] == 0.5
    assert "per_class" not in MULTI_LABEL.summary(multi)["window"] and SINGLE_LABEL.summary(single) is single
    assert SINGLE_LABEL.known(table, ["x"]).tolist() == [True, False, True] and MULTI_LABEL.known(table, []).all()
    with pytest.raises(ee.EchoError, match="none of the labels"):
        SINGLE_LABEL.known(table, ["z"])
