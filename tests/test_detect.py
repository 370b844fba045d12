"""Detection over long recordings: windows, events, formats, resume after a kill, bounded memory."""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from echoengine import catalog, formats
from echoengine.clips import fixed_windows, window_starts
from echoengine.config import EchoConfig
from echoengine.detect import merge_events, stream_windows, window_detections
from echoengine.synthetic import synthesize_call

SMALL = {"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400, "n_fft": 1024}


@pytest.fixture(scope="module")
def small_bundle(synthetic_dataset, tmp_path_factory):
    """A small_cnn bundle on a light front end (16 kHz), trained for one epoch: detection plumbing only."""
    from echoengine.train import fit

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


@pytest.mark.parametrize(("n", "length", "hop", "block"), [(10, 4, 4, 3), (10, 4, 3, 7), (3, 4, 2, 1), (8, 4, 4, 8),
                                                           (100_000, 5000, 2500, 12_345), (4999, 5000, 1000, 600)])
def test_windows_cover_the_whole_file_exactly(n, length, hop, block):
    y = np.random.default_rng(n).normal(size=n).astype(np.float32)
    blocks = [y[i : i + block] for i in range(0, n, block)]
    got = list(stream_windows(blocks, length=length, hop=hop))
    starts = [s for s, _, _ in got]
    assert starts == window_starts(n, length=length, hop=hop).tolist()
    expected, _ = fixed_windows(y, length=length, hop=hop)
    np.testing.assert_array_equal(np.stack([w for _, w, _ in got]), expected)  # last one padded with zeros
    covered = np.zeros(n, bool)
    for start, _, valid in got:
        assert valid == min(length, n - start)
        covered[start : start + valid] = True
    assert covered.all()
    assert starts[1:] == [s + hop for s in starts[:-1]]  # the sum of the hops reaches the last window


def test_events_merge_overlapping_and_touching_windows_of_one_class():
    scores = pd.DataFrame({
        "file": ["a"] * 6 + ["b"] * 2,
        "start": [0.0, 2.5, 5.0, 7.5, 15.0, 20.0, 0.0, 2.5],
        "end": [5.0, 7.5, 10.0, 12.5, 20.0, 25.0, 5.0, 7.5],
        "owl": [0.9, 0.6, 0.1, 0.2, 0.7, 0.8, 0.1, 0.1],
        "frog": [0.1, 0.3, 0.8, 0.9, 0.2, 0.1, 0.95, 0.4],
    })
    detections = window_detections(scores, ["owl", "frog"], thresholds=np.array([0.5, 0.5]))
    events = merge_events(detections)
    got = [tuple(r) for r in events[["file", "start", "end", "label", "score", "windows"]].itertuples(index=False)]
    assert got == [("a", 0.0, 7.5, "owl", 0.9, 2),     # overlapping windows merge
                   ("a", 5.0, 12.5, "frog", 0.9, 2),
                   ("a", 15.0, 25.0, "owl", 0.8, 2),   # touching windows (20.0 == 20.0) merge
                   ("b", 0.0, 5.0, "frog", 0.95, 1)]   # never across files
    assert events.loc[0, "mean_score"] == pytest.approx(0.75)
    assert len(merge_events(detections[detections["start"] != 20.0], gap=0.0)) == 4
    assert len(merge_events(window_detections(scores.iloc[[0, 4]], ["owl"], thresholds=np.array([0.5])),
                            gap=10.0)) == 1  # 5 s apart, gap 10 s


def test_per_class_thresholds_top_n_and_species_lists():
    scores = pd.DataFrame({"file": "a", "start": [0.0], "end": [5.0], "owl": [0.4], "frog": [0.45], "bat": [0.15]})
    classes = ["owl", "frog", "bat"]
    by_class = window_detections(scores, classes, thresholds=np.array([0.3, 0.5, 0.1]))
    assert sorted(by_class["label"]) == ["bat", "owl"]
    assert window_detections(scores, classes, thresholds=np.full(3, 0.1), top_n=1)["label"].tolist() == ["frog"]
    assert window_detections(scores, classes, thresholds=np.full(3, 0.1), include=["bat"])["label"].tolist() == [
        "bat"]
    assert sorted(window_detections(scores, classes, thresholds=np.full(3, 0.1), exclude=["bat"])["label"]) == [
        "frog", "owl"]
    with pytest.raises(Exception, match="unknown species wolf"):
        window_detections(scores, classes, thresholds=np.full(3, 0.1), include=["wolf"])


def _events() -> pd.DataFrame:
    return pd.DataFrame({"file": ["/x/site1.flac", "/x/site1.flac", "/x/site2.wav"], "start": [0.0, 12.5, 3.25],
                         "end": [7.5, 17.5, 8.25], "label": ["Turdus merula", "grenouille été", "蛙"],
                         "score": [0.9123, 0.5, 0.75], "low_freq": [20.0, 20.0, 20.0],
                         "high_freq": [13000.0, 13000.0, 13000.0]})


def test_raven_and_audacity_round_trips_give_the_same_events(tmp_path):
    events = _events()
    formats.write_raven(events, tmp_path / "t.txt", combined=True)
    back = formats.read_raven(tmp_path / "t.txt")
    pd.testing.assert_frame_equal(back.drop(columns="file"), events.drop(columns="file"))
    assert back["file"].tolist() == ["site1.flac", "site1.flac", "site2.wav"]
    header = (tmp_path / "t.txt").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                      "High Freq (Hz)", "Species", "Score", "Begin File"]
    formats.write_audacity(events, tmp_path / "a.txt")
    again = formats.read_audacity(tmp_path / "a.txt")
    pd.testing.assert_frame_equal(again.drop(columns="file"), events.drop(columns="file"))


def test_audacity_labels_with_frequency_lines_and_bad_lines():
    text = "0.1\t0.4\tSP\n\\\t6441.0\t12296.5\n0.5\t3.0\tCRER\n"
    table = formats.read_audacity(io.StringIO(text))
    assert table[["start", "end", "label"]].values.tolist() == [[0.1, 0.4, "SP"], [0.5, 3.0, "CRER"]]
    assert table.loc[0, ["low_freq", "high_freq"]].tolist() == [6441.0, 12296.5]
    assert table.loc[1, ["low_freq", "high_freq"]].isna().all()
    with pytest.raises(ValueError, match="line 2"):
        formats.read_audacity(io.StringIO("0.1\t0.4\tSP\nnot a label\n"))


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


def test_resume_after_a_kill_gives_byte_identical_outputs(small_bundle, tmp_path):
    folder = tmp_path / "field"
    _field_recordings(folder, 24, seconds=30.0)
    options = ["--overlap", "2.5", "--threshold", "0.3", "--batch-size", "4", "--workers", "0", "--quiet"]
    reference = tmp_path / "reference"
    assert _cli("detect", small_bundle, folder, "--out", reference, *options).returncode == 0

    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "echoengine", "detect", str(small_bundle), str(folder), "--out",
                                str(out), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / ".detect").glob("*.npz"))) < 3:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list((out / ".detect").glob("*.npz")))
    assert 3 <= finished < 24 and not (out / "events.csv").exists()  # killed mid-run
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
    whole_file_bytes = rate * seconds * 4  # float32, as a decode of the whole file would hold it (920 MB)
    script = (  # peak memory of the run itself: Linux's high-water mark, reset once the libraries are loaded
        "from echoengine.bundle import load_bundle\n"
        "from echoengine.detect import DetectOptions, detect\n"
        "def kib(key):\n"
        "    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(key))\n"
        f"bundle = load_bundle({str(small_bundle)!r})\n"
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


def test_detect_scores_the_windows_predict_scores_and_uses_calibrated_thresholds(small_bundle, synthetic_dataset,
                                                                                 tmp_path):
    import shutil

    from echoengine.bundle import load_bundle
    from echoengine.detect import DetectOptions, detect, load_thresholds
    from echoengine.predict import window_probabilities

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle_dir)
    result = _cli("calibrate", bundle_dir, synthetic_dataset, "--no-cache")
    assert result.returncode == 0, result.stderr
    bundle = load_bundle(bundle_dir)
    thresholds = load_thresholds(bundle_dir, bundle.classes)
    table = pd.read_csv(bundle_dir / "thresholds.csv")
    assert table.columns.tolist() == ["class", "threshold", "f1", "precision", "recall", "positives"]
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
    from echoengine.detect import DetectOptions, detect
    from echoengine.export import export_onnx

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
