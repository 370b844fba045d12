"""Detection over long recordings: windows, events, formats, resume after a kill, bounded memory."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from echoengine import catalog, formats
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.synthetic import synthesize_call

SMALL = {"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400, "n_fft": 1024}


@pytest.fixture(scope="module")
def small_bundle(synthetic_dataset, tmp_path_factory):
    """A small_cnn bundle on a light front end (16 kHz), trained for one epoch: detection plumbing only."""
    from echoengine.training import fit

    config = EchoConfig().replace(
        audio={"sample_rate": 16000}, frontend={**SMALL, "fmax": 7000.0},
        model={"backbone": "small_cnn", "head": "linear"}, train={"epochs": 1, "device": "cpu"},
    )
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    out = tmp_path_factory.mktemp("detect") / "bundle"
    fit(table, table, catalog.class_names(table), config, out, progress=False, log=lambda line: None)
    return out


def _field_recordings(folder, n: int, seconds: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        y = synthesize_call("synthetic-trill", seconds=seconds, rng=rng, snr_db=10.0)  # 32 kHz, resampled by the bundle
        path = folder / f"site{i:02d}.flac"
        sf.write(path, y, 32000)
        paths.append(str(path))
    return paths


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "echoengine", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def test_a_bad_file_in_a_folder_is_reported_and_skipped(small_bundle, tmp_path):
    folder = tmp_path / "field"
    good = _field_recordings(folder, 2, seconds=12.0)
    (folder / "broken.wav").write_text("not audio at all\n" * 50)
    out = tmp_path / "out"
    result = _cli("detect", small_bundle, folder, "--out", out, "--threshold", "0.0", "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "error: " in result.stderr and "broken.wav" in result.stderr
    errors = pd.read_csv(out / "errors.csv")
    assert errors["file"].str.endswith("broken.wav").tolist() == [True]
    assert "not a readable audio file" in errors.loc[0, "error"]
    scores = pd.read_parquet(out / "scores.parquet")
    assert sorted(scores["file"].unique()) == good
    # 12 s at 5 s windows: 0, 5 and a padded window at 10 s ending at the file's end
    first = scores[scores["file"] == good[0]].drop_duplicates("start")
    assert first["start"].tolist() == [0.0, 5.0, 10.0] and first["end"].tolist() == [5.0, 10.0, 12.0]
    assert first["partial"].tolist() == [False, False, True]
    events = pd.read_csv(out / "events.csv")
    assert set(events["file"]) == set(good)  # threshold 0: every class detects in every file
    raven = formats.read_raven(out / "raven" / "site00.selections.txt")
    assert len(raven) == len(events[events["file"] == good[0]])


def _recorded(out, folder) -> set[str]:
    """The files of ``folder`` the ledger of ``out`` holds scores of (a part being written is not read)."""
    from echoengine.ledger import LEDGER, finished_files
    from echoengine.sources import find_audio

    if not (out / LEDGER).is_dir():
        return set()
    return finished_files(out / LEDGER, find_audio([folder]), log=lambda line: None)


def test_resume_after_a_kill_gives_byte_identical_outputs(small_bundle, tmp_path):
    folder = tmp_path / "field"
    _field_recordings(folder, 24, seconds=60.0)  # long enough that the ledger writes a part or more before the end
    options = ["--overlap", "2.5", "--threshold", "0.3", "--batch-size", "4", "--workers", "0", "--quiet"]
    reference = tmp_path / "reference"
    assert _cli("detect", small_bundle, folder, "--out", reference, *options).returncode == 0

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "echoengine", "detect", str(small_bundle), str(folder), "--out",
                                str(out), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _recorded(out, folder):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(_recorded(out, folder))
    assert 1 <= finished < 24 and not (out / "events.csv").exists()  # killed mid-run
    resumed = _cli("detect", small_bundle, folder, "--out", out, *options, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{finished} of 24 files already done" in resumed.stderr
    names = sorted(str(p.relative_to(reference)) for p in reference.rglob("*")
                   if p.is_file() and ".detect" not in p.parts)
    assert "events.csv" in names and "scores.parquet" in names and "raven/site23.selections.txt" in names
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert len(pd.read_parquet(out / "scores.parquet")) == len(pd.read_parquet(reference / "scores.parquet"))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak memory is read from Linux /proc")
def test_a_two_hour_recording_streams_in_bounded_memory(small_bundle, tmp_path):
    path = tmp_path / "two_hours.flac"
    rate, seconds = 32000, 2 * 3600
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        call = synthesize_call("synthetic-trill", seconds=60.0, rng=rng, snr_db=10.0)
        for _ in range(seconds // 60):
            f.write(call)
    short = tmp_path / "short.flac"
    sf.write(short, call[: rate * 30], rate)
    whole_file_bytes = rate * seconds * 4  # float32, as a decode of the whole file would hold it (920 MB)
    script = (  # peak memory of the run itself: Linux's high-water mark, reset once a short run loaded the code
        "from echoengine.bundle import load_bundle\n"
        "from echoengine.detection import DetectOptions, detect\n"
        "def kib(key):\n"
        "    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key))\n"
        f"bundle = load_bundle({str(small_bundle)!r})\n"
        f"detect([bundle], [{str(short)!r}], {str(tmp_path / 'warm')!r},\n"
        "       options=DetectOptions(batch_size=64, workers=0), progress=False, log=lambda line: None)\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "before = kib('VmRSS')\n"
        f"detect([bundle], [{str(path)!r}], {str(tmp_path / 'out')!r},\n"
        "       options=DetectOptions(batch_size=64, workers=0), progress=False, log=lambda line: None)\n"
        "print(before * 1024, kib('VmHWM') * 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    before, peak = map(int, result.stdout.split()[-2:])
    print(f"resident before the run {before / 1e6:.0f} MB, peak during it {peak / 1e6:.0f} MB")
    assert peak - before < 250e6 < whole_file_bytes / 2, (before, peak)  # buffers, never the whole file
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert scores["start"].nunique() == seconds // 5 and scores["end"].max() == seconds


def test_keep_scores_keeps_the_window_scores_reaching_it_and_the_same_events(small_bundle, tmp_path):
    files = _field_recordings(tmp_path / "field", 2, seconds=12.0)
    every, some = tmp_path / "every", tmp_path / "some"
    assert _cli("detect", small_bundle, *files, "--out", every, "--threshold", "0.3", "--quiet").returncode == 0
    all_scores = pd.read_parquet(every / "scores.parquet")
    assert len(all_scores) == 2 * 3 * 4  # by default every window and class of an ordinary bundle
    floor = float(np.median(all_scores["score"]))  # about half of them kept
    done = _cli("detect", small_bundle, *files, "--out", some, "--threshold", "0.3", "--keep-scores", f"{floor!r}",
                "--quiet")
    assert done.returncode == 0, done.stderr
    kept = pd.read_parquet(some / "scores.parquet")
    assert 0 < len(kept) < len(all_scores)
    assert kept.reset_index(drop=True).equals(all_scores[all_scores["score"] >= floor].reset_index(drop=True))
    assert (every / "events.csv").read_bytes() == (some / "events.csv").read_bytes()
    refused = _cli("detect", small_bundle, *files, "--out", tmp_path / "bad", "--keep-scores", "2", "--quiet")
    assert refused.returncode == 2 and "--keep-scores must be a score in [0, 1]" in refused.stderr


def test_an_occurrence_table_zeroes_and_down_weights_species_in_predict_detect_and_the_service(small_bundle,
                                                                                               tmp_path):
    from echoengine import api
    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions
    from echoengine.occurrence import Place
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection
    from echoengine.service.server import open_service

    classes = load_bundle(small_bundle).classes
    table = tmp_path / "ranges.csv"  # in January at 45, -75: the first class down-weighted, the second absent,
    table.write_text("species,lat_min,lat_max,lon_min,lon_max,months,weight,site\n"  # the third at the pond only
                     f"{classes[0]},40,50,-80,-70,4-9,,\n{classes[0]},,,,,,0.5,\n{classes[1]},-45,-10,110,155,,,\n"
                     f"{classes[2]},,,,,,,pond\n")
    place = Place.of(lat=45.0, lon=-75.0, date="2024-01-15", occurrence=table, site="pond")
    files = _field_recordings(tmp_path / "field", 2, seconds=12.0)
    plain, here = api.predict(small_bundle, files), api.predict(small_bundle, files, place=place)
    weights = np.array([0.5, 0.0] + [1.0] * (len(classes) - 2))
    np.testing.assert_allclose(here.probabilities, plain.probabilities * weights, rtol=1e-6)
    elsewhere = Place.of(date="2024-01-15", occurrence=table, site="meadow")  # a site without a position
    np.testing.assert_allclose(api.predict(small_bundle, files, place=elsewhere).probabilities,
                               plain.probabilities * [0.5, 0.0, 0.0, *weights[3:]], rtol=1e-6)
    every = api.detect(small_bundle, files, out=tmp_path / "all", threshold=0.1).events
    weighed = api.detect(small_bundle, files, out=tmp_path / "here", threshold=0.1, place=place).events
    factor = every["label"].map(dict(zip(classes, weights, strict=True)))
    expected = every.assign(score=every["score"] * factor, mean_score=every["mean_score"] * factor)
    expected = expected[(factor > 0) & (expected["score"] >= 0.1)].reset_index(drop=True)
    assert classes[0] in set(every["label"]) and classes[1] in set(every["label"])
    pd.testing.assert_frame_equal(weighed, expected, check_exact=False, rtol=1e-3)
    options = DetectOptions(threshold=0.1, location_filter=0.03, occurrence=str(table))
    service = open_service(small_bundle, store=tmp_path / "store", options=options)
    try:  # the service, by the recording's position and date, gives detect's events
        recording, _ = ingest(service.db, service.store, Path(files[0]).read_bytes(), filename="a.flac", lat=45.0,
                              lon=-75.0, recorded_at="2024-01-15T05:00:00+00:00", sensor_id="pond")
        assert service.worker.run_once() == recording
        with service.db.session() as session:
            found = sorted((d.species, d.start, round(d.score, 3)) for d in session.query(Detection))
    finally:
        service.stop()
    mine = weighed[weighed["file"] == files[0]]
    assert found and classes[0] in set(mine["label"]) and classes[1] not in set(mine["label"])
    assert found == sorted(zip(mine["label"], mine["start"], mine["score"].round(3)))


def test_detect_scores_the_windows_predict_scores_and_uses_calibrated_thresholds(small_bundle, synthetic_dataset,
                                                                                 tmp_path):
    import shutil

    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions, detect, load_thresholds
    from echoengine.layout import weights_digest
    from echoengine.prediction import window_probabilities

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle_dir)
    result = _cli("calibrate", bundle_dir, synthetic_dataset, "--no-cache")
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(bundle_dir)
    thresholds = load_thresholds(bundle_dir, bundle.classes)
    table = pd.read_csv(bundle_dir / "thresholds.csv")
    assert table.columns.tolist() == ["class", "threshold", "f1", "precision", "recall", "positives", "weights"]
    assert set(table["weights"]) == {weights_digest(bundle_dir)}  # calibrated for these weights
    assert np.allclose(thresholds, table["threshold"]) and (table["positives"] > 0).all()

    files = _field_recordings(tmp_path / "field", 2, seconds=17.0)
    detect([bundle], files, tmp_path / "out", options=DetectOptions(), progress=False, log=lambda line: None)
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    wide = scores.pivot_table(index=["file", "start"], columns="class", values="score").reset_index()
    expected, _ = window_probabilities([bundle], pd.DataFrame({"path": files, "label": "", "group": files}))
    assert len(wide) == len(expected) == 8  # 17 s: windows at 0, 5, 10 and a partial one at 15 s, per file
    np.testing.assert_allclose(wide[bundle.classes].to_numpy(), expected, atol=1e-4)
    events = pd.read_csv(tmp_path / "out" / "events.csv")
    lowest = dict(zip(bundle.classes, thresholds, strict=True))
    assert all(score >= lowest[label] - 1e-4 for label, score in zip(events["label"], events["score"], strict=True))


def test_onnx_scoring_matches_pytorch_and_min_window_drops_the_short_tail(small_bundle, tmp_path):
    import shutil

    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions, detect
    from echoengine.exporting import export_onnx

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle_dir)
    files = _field_recordings(tmp_path / "field", 2, seconds=16.0)
    export_onnx(bundle_dir, check=files[:1])
    bundle = load_bundle(bundle_dir)
    runs = {}
    for name, options in {"torch": DetectOptions(), "onnx": DetectOptions(onnx=True),
                          "min_window": DetectOptions(min_window=1.5)}.items():
        detect([bundle], files, tmp_path / name, options=options, progress=False, log=lambda line: None)
        runs[name] = pd.read_parquet(tmp_path / name / "scores.parquet")
    assert len(runs["onnx"]) == len(runs["torch"])
    np.testing.assert_allclose(runs["onnx"]["score"], runs["torch"]["score"], atol=1e-4)
    # 16 s: the last window holds 1 s of audio; --min-window 1.5 drops it, and only it
    assert sorted(runs["torch"]["start"].unique()) == [0.0, 5.0, 10.0, 15.0]
    assert sorted(runs["min_window"]["start"].unique()) == [0.0, 5.0, 10.0]


def test_one_file_scored_alone_gives_detects_scores_and_events(small_bundle, tmp_path):
    """score_file and file_events (what a server runs per upload) give the numbers of a detect run."""
    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions, detect, file_events, score_file
    from echoengine.scoring import window_scorer

    files = _field_recordings(tmp_path / "field", 2, seconds=16.0, seed=3)
    bundle = load_bundle(small_bundle)
    options = DetectOptions(overlap=2.5, min_window=1.5, threshold=0.0, top_n=1)  # every window detects
    detect([bundle], files, tmp_path / "run", options=options, progress=False, log=lambda line: None)
    recorded = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    run_events = pd.read_csv(tmp_path / "run" / "events.csv")
    scorer = window_scorer([bundle])
    for path in files:
        scores = score_file(scorer, path, options)
        mine = recorded[recorded["file"] == path].pivot(index="start", columns="class", values="score")
        assert scores["start"].tolist() == mine.index.tolist()
        np.testing.assert_allclose(scores[bundle.classes].to_numpy(), mine[bundle.classes].to_numpy(), atol=1e-6)
        events = file_events(scores, bundle.classes, bundle.config, thresholds=np.zeros(len(bundle.classes)),
                             options=options)
        expected = run_events[run_events["file"] == path]
        assert len(events) == len(expected) > 0
        assert events["label"].tolist() == expected["label"].tolist()
        np.testing.assert_allclose(events[["start", "end", "score"]], expected[["start", "end", "score"]], atol=1e-3)


def test_resume_retries_failed_files_and_same_named_files_keep_apart(small_bundle, tmp_path):
    folder = tmp_path / "field"
    folder.mkdir()
    y = synthesize_call("synthetic-trill", seconds=6.0, rng=np.random.default_rng(0))
    sf.write(folder / "x.wav", y, 32000)
    sf.write(folder / "x.flac", y, 32000)
    (folder / "late.wav").write_text("still copying from the recorder\n")
    out = tmp_path / "out"
    assert _cli("detect", small_bundle, folder, "--out", out, "--quiet").returncode == 0
    assert pd.read_csv(out / "errors.csv")["file"].str.endswith("late.wav").tolist() == [True]
    assert sorted(p.name for p in (out / "raven").iterdir()) == ["x.flac.selections.txt", "x.wav.selections.txt"]
    sf.write(folder / "late.wav", y, 32000)  # the copy finished
    resumed = _cli("detect", small_bundle, folder, "--out", out, "--quiet", "--resume")
    assert resumed.returncode == 0 and "2 of 3 files already done" in resumed.stderr
    assert pd.read_csv(out / "errors.csv").empty
    assert (out / "raven" / "late.selections.txt").is_file()
    assert _cli("detect", small_bundle, folder, "--out", out, "--quiet", "--resume", "--overlap", "1").returncode == 2


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_folder_in_use_is_refused_unless_resumed_or_overwritten(small_bundle, tmp_path, capsys):
    from echoengine.cli import main

    files = _field_recordings(tmp_path / "field", 2, seconds=6.0)
    out = tmp_path / "out"
    assert main(["detect", str(small_bundle), *files, "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in (out / "raven").iterdir()) == ["site00.selections.txt", "site01.selections.txt"]
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["detect", str(small_bundle), files[0], "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"error: {out}: holds an earlier detect run" in error
    assert "--resume" in error and "--overwrite" in error
    assert _snapshot(out) == before  # nothing lost, nothing overwritten

    (out / "raven" / "my notes.txt").write_text("kept by hand")  # a file detect did not write stops --overwrite
    assert main(["detect", str(small_bundle), files[0], "--out", str(out), "--quiet", "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert "holds files detect did not write" in error and "my notes.txt" in error
    assert _snapshot(out) == {**before, "raven/my notes.txt": b"kept by hand"}
    (out / "raven" / "my notes.txt").unlink()

    assert main(["detect", str(small_bundle), files[0], "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "raven").iterdir()) == ["site00.selections.txt"]  # the old run is gone
    assert sorted(p.name for p in (out / "audacity").iterdir()) == ["site00.txt"]
    assert pd.read_parquet(out / "scores.parquet")["file"].unique().tolist() == files[:1]
    assert len(list((out / ".detect").glob("part-*.npz"))) == 1  # one part: the old run's records are gone

    with pytest.raises(SystemExit) as exit_info:  # argparse: one or the other
        main(["detect", str(small_bundle), files[0], "--out", str(out), "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.docx").write_text("years of work")
    for flag, words in (("--resume", "holds no earlier detect run to resume"), ("--overwrite", "chapter1.docx")):
        assert main(["detect", str(small_bundle), files[0], "--out", str(other), "--quiet", flag]) == 2
        assert words in capsys.readouterr().err
    assert _snapshot(other) == {"chapter1.docx": b"years of work"}


def test_overwrite_recognises_a_finished_run_of_an_older_version(tmp_path):
    from echoengine.ledger import claim_output

    out = tmp_path / "old"
    for name in (".detect/run.json", ".detect/0123456789abcdef0123.npz", "events.csv", "scores.parquet",
                 "raven/a.selections.txt", "audacity/a.txt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x")
    claim_output(out, resume=False, overwrite=True)  # no list of outputs: its tables are known by their names
    assert list(out.iterdir()) == []
    (out / "audacity").mkdir()
    (out / "audacity" / "a.txt").write_text("hand-made labels")  # no ledger: nothing here is detect's
    with pytest.raises(EchoError, match="did not write"):
        claim_output(out, resume=False, overwrite=True)
    assert (out / "audacity" / "a.txt").read_text() == "hand-made labels"


def test_progress_stays_within_its_total_in_seconds_for_short_files(small_bundle, tmp_path, capsys, recwarn):
    from tqdm import TqdmWarning

    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions, detect

    files = [*_field_recordings(tmp_path / "a", 1, seconds=6.1), *_field_recordings(tmp_path / "b", 1, seconds=11.7)]
    detect([load_bundle(small_bundle)], files, tmp_path / "out", options=DetectOptions(), progress=True,
           log=lambda line: None)
    bars = capsys.readouterr().err.replace("\r", "\n")
    assert not [w for w in recwarn if issubclass(w.category, TqdmWarning)], [str(w.message) for w in recwarn]
    assert "clamping" not in bars and "<-" not in bars  # no warning, no negative time left
    assert "17.8/17.8 s audio" in bars and "2/2 files" in bars


def _retrained(bundle_dir) -> None:
    """The same bundle with other weights, as a retraining in place leaves it."""
    import torch

    from echoengine.layout import WEIGHTS_FILE

    state = torch.load(bundle_dir / WEIGHTS_FILE, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, bundle_dir / WEIGHTS_FILE)


_THRESHOLDS = [("synthetic-croak", "0.4"), ("synthetic-harmonic", "0.5"), ("synthetic-trill", "0.6"),
               ("synthetic-upsweep", "0.7")]


@pytest.mark.parametrize(("content", "words"), [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xff\xfe binary", "not a readable CSV"),
    (b"a;b\n1;2\n", "no class or threshold column"),
    (b"", "not a readable CSV"),
    ([*_THRESHOLDS[:1], ("synthetic-harmonic", "nan"), *_THRESHOLDS[2:]], "threshold of 'synthetic-harmonic' is not a"),
    ([("synthetic-croak", ""), *_THRESHOLDS[1:]], "threshold of 'synthetic-croak' is not a number"),
    ([("synthetic-croak", "high"), *_THRESHOLDS[1:]], "threshold of 'synthetic-croak' is not a number"),
    ([*_THRESHOLDS[:3], ("synthetic-upsweep", "1.5")], "'synthetic-upsweep' is 1.5, outside [0, 1]"),
    ([("synthetic-croak", "-0.1"), *_THRESHOLDS[1:]], "outside [0, 1]"),
    (_THRESHOLDS[:1], "no threshold for 3 of the model's classes (synthetic-harmonic, synthetic-trill"),
    ([*_THRESHOLDS, _THRESHOLDS[0]], "'synthetic-croak' is listed more than once"),
])
def test_a_bad_thresholds_file_is_a_one_line_error_naming_it(small_bundle, tmp_path, content, words):
    import re
    import shutil

    from echoengine.layout import read_classes
    from echoengine.thresholds import load_thresholds, write_thresholds

    bundle_dir = Path(shutil.copytree(small_bundle, tmp_path / "bundle"))
    classes = read_classes(bundle_dir)
    if isinstance(content, list):  # a table of this bundle's weights, with one thing wrong
        write_thresholds(bundle_dir, pd.DataFrame(content, columns=["class", "threshold"]))
    else:
        (bundle_dir / "thresholds.csv").write_bytes(content)
    with pytest.raises(EchoError, match=re.escape(words)) as error:
        load_thresholds(bundle_dir, classes)
    assert str(error.value).startswith(str(bundle_dir / "thresholds.csv")) and "\n" not in str(error.value)


def test_thresholds_record_the_weights_they_were_calibrated_for(small_bundle, tmp_path, capsys, caplog):
    import logging
    import shutil

    from echoengine.cli import main
    from echoengine.layout import read_classes, weights_digest
    from echoengine.thresholds import load_thresholds, models_digest, write_thresholds

    bundle_dir = Path(shutil.copytree(small_bundle, tmp_path / "bundle"))
    classes = read_classes(bundle_dir)
    table = pd.DataFrame({"class": classes, "threshold": [0.123456, 0.5, 0.25, 1.0]})
    write_thresholds(bundle_dir, table)
    written = pd.read_csv(bundle_dir / "thresholds.csv")  # a plain CSV
    assert written.columns.tolist() == ["class", "threshold", "weights"]
    assert set(written["weights"]) == {weights_digest(bundle_dir)}
    np.testing.assert_array_equal(load_thresholds(bundle_dir, classes[::-1]), [1.0, 0.25, 0.5, 0.1235])
    (bundle_dir / "thresholds.csv").write_text("class,threshold\n" + "".join(f"{c},0.5\n" for c in classes))
    with caplog.at_level(logging.WARNING):  # written before the digest was recorded: used, with a warning
        assert load_thresholds(bundle_dir, classes).tolist() == [0.5] * 4
    assert "records no weights digest" in caplog.text and "re-run `echoengine calibrate`" in caplog.text
    write_thresholds(bundle_dir, table)

    files = _field_recordings(tmp_path / "field", 1, seconds=6.0)
    _retrained(bundle_dir)
    with pytest.raises(EchoError, match=r"calibrated for other weights.*re-run `echoengine calibrate"):
        load_thresholds(bundle_dir, classes)
    capsys.readouterr()
    assert main(["detect", str(bundle_dir), *files, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "calibrated for other weights" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any scoring
    assert main(["detect", str(bundle_dir), *files, "--out", str(tmp_path / "out"), "--threshold", "2"]) == 2
    assert "error: --threshold must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(EchoError, match="must be in"):
        from echoengine.detection import DetectOptions

        DetectOptions(threshold=float("nan"))

    cv = tmp_path / "cv"  # a CV folder: one digest over its folds
    for fold in ("fold0", "fold1"):
        shutil.copytree(small_bundle, cv / fold)
        (cv / fold / "metrics.json").write_text("{}")
    write_thresholds(cv, table)
    assert pd.read_csv(cv / "thresholds.csv")["weights"].iloc[0] == models_digest(cv) != weights_digest(cv / "fold0")
    assert load_thresholds(cv, classes) is not None
    _retrained(cv / "fold1")
    with pytest.raises(EchoError, match="calibrated for other weights"):
        load_thresholds(cv, classes)


def test_a_truncated_record_is_scored_again_on_resume(small_bundle, tmp_path):
    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions, detect

    files = _field_recordings(tmp_path / "field", 3, seconds=8.0)
    bundle, out, options = load_bundle(small_bundle), tmp_path / "out", DetectOptions(threshold=0.3)
    detect([bundle], files, out, options=options, progress=False, log=lambda line: None)
    outputs = {name: data for name, data in _snapshot(out).items() if not name.startswith(".detect/part-")}
    _first, record = sorted((out / ".detect").glob("part-*.npz"))  # the first file at once, the others together
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])  # a disk that filled up, a bad copy
    lines: list[str] = []
    detect([bundle], files, out, options=options, resume=True, progress=False, log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and record.name in warnings[0] and "scoring its files again" in warnings[0]
    assert "1 of 3 files already done" in " ".join(lines)
    again = {name: data for name, data in _snapshot(out).items() if not name.startswith(".detect/part-")}
    assert again == outputs  # the same outputs as the uninterrupted run
    assert _recorded(out, tmp_path / "field") == set(files)
