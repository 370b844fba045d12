"""The learning loop end to end on real recordings (ESC-10's clips in field recordings over a real background),
through the command line and a real server: serve, upload, review through the API (an oracle that knows the
truth), export, retrain on the original data and the reviews (and multi-label on the recordings and their
verified negatives), calibrate from reviews, compare on held-out reviews, serve the new model as a candidate and
promote it. The steps are those of ``bench/review_loop.py`` (which prints the comparison on all 50 classes);
about 4 minutes on 2 cores, so marked slow: the synthetic tests of test_reviews.py, test_review_calibration.py
and test_model_activation.py cover each step in CI."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("review_loop", ROOT / "bench" / "review_loop.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_learning_loop_on_real_recordings(esc50, soundscapes, tmp_path):
    bench = _bench()
    loop = bench.Loop(tmp_path, esc10=True, base_sources=2, min_reviews=5)
    original = loop.prepare(esc50, soundscapes / "maad-indices")
    assert {r.day for r in loop.recordings} == {0, 1, 2}
    assert all(any(label == "" for *_, label in r.truth) for r in loop.recordings)  # a background stretch each
    old = loop.train(original, "old")

    server = loop.serve_and_review(old)
    try:
        detections = server.detections()
        assert {d["model_version"] for d in detections} == {"old/1"} and all(d["review"] for d in detections)
        species = {row["species"]: row for row in server.client.get("/api/species").json()}
    finally:
        server.stop()
    assert loop.reviews["confirmed"] and loop.reviews["corrected"] and loop.reviews["rejected"]
    assert sum(row["confirmed"] for row in species.values()) == loop.reviews["confirmed"] + loop.reviews["corrected"]

    day1, day2 = loop.export(original)
    events = pd.read_csv(day1 / "reviews.csv", keep_default_na=False)
    assert events["time"].str.startswith(bench.DAYS[0]).all() and len(events) < len(detections)
    combined = pd.read_csv(day1 / "combined.csv")
    clips = pd.read_csv(day1 / "clips" / "meta" / "clips.csv")
    assert len(combined) == len(pd.read_csv(original / "meta" / "clips.csv")) + len(clips)

    new = loop.train(day1 / "combined.csv", "new", "--allow-outside-paths")
    trained = pd.read_csv(new / "splits.csv")
    assert trained["path"].str.contains("export-day1").sum() == len(clips)  # the reviews are in its data
    multi = loop.train(day1 / "recordings", "multi", "--multilabel", "--negatives", day1 / "negatives",
                       "--unlabeled", "ignore", options=("--backbone", "small_cnn", "--epochs", "1"))  # it reads them
    assert (multi / "metrics.json").is_file()

    old_calibrated = tmp_path / "old-calibrated"
    shutil.copytree(old, old_calibrated)
    for bundle in (old_calibrated, new):
        printed = loop.calibrate(bundle, day2)
        assert "reviewed" in printed and (bundle / "thresholds.csv").is_file()
        table = pd.read_csv(bundle / "thresholds.csv")
        assert set(table["source"]) <= {"reviews", "kept"} and table["reviewed"].max() > 0

    printed, comparison = loop.compare(old_calibrated, new, day1, day2)
    from echoengine.service.reviewed import read_store

    day3 = read_store(loop.path("store"), since=f"{bench.DAYS[2]}T00:00:00Z")
    overall = comparison.set_index("species").loc["all"]
    assert f"{len(day3)} held-out reviewed detections" in printed and overall["reviewed"] == len(day3)
    assert overall["true"] == (day3["verdict"] != "rejected").sum()
    assert overall["old_detections"] > 0 and overall["new_detections"] > 0

    promoted, after = loop.promote(new)
    assert promoted["name"] == "new" and promoted["serving"] and promoted["previous"]["name"] == "old"
    assert after and {d["model_version"] for d in after} == {"new/1"}
