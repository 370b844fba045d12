"""Detection's pure parts: windows over a file, events from window scores, event formats, the summary."""

import io

import numpy as np
import pandas as pd
import pytest

from echoengine import formats
from echoengine.clips import fixed_windows, stream_windows, window_starts
from echoengine.events import merge_events, window_detections


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


def test_summary_puts_stamped_files_on_the_time_of_day_and_the_others_apart(tmp_path):
    from echoengine.detection import summarize
    from echoengine.plots import detection_layout
    from echoengine.summary import file_timestamp

    out = tmp_path / "out"
    out.mkdir()
    events = pd.DataFrame({
        "file": ["/rec/S4A03895_20190522_061500.flac", "/rec/S4A03895_20190523_221500.flac", "/rec/robin.ogg",
                 "/rec/robin.ogg", "/rec/toad.flac"],
        "start": [30.0, 0.0, 0.0, 5.0, 10.0], "end": [35.0, 5.0, 5.0, 10.0, 15.0],
        "label": ["owl", "owl", "frog", "frog", "owl"], "score": [0.9, 0.8, 0.7, 0.6, 0.95],
    })
    formats.write_csv(events, out / "events.csv")
    lines: list[str] = []
    table = summarize(out, log=lines.append)
    assert (out / "summary.png").stat().st_size > 0 and (out / "summary.csv").is_file()
    owl = table.set_index("species").loc["owl"]
    assert owl["events"] == 3 and owl["hours_of_day"] == "06 22"  # from the two stamped files only
    note = lines[-1]
    assert "2 file(s) on a time-of-day axis" in note and "2 without a time stamp" in note
    assert "robin.ogg" in note and "toad.flac" in note and "S4A03895" not in note
    events["when"] = [file_timestamp(f, s) for f, s in zip(events["file"], events["start"], strict=True)]
    layout = detection_layout(events)
    assert layout["axis"].tolist() == ["time of day"] * 2 + ["end to end"] * 3
    np.testing.assert_allclose(layout["x"], [6.25 + 30 / 3600, 22.25, 0.0, 5.0, 10.0 + 10.0])  # clock hours; seconds
    np.testing.assert_allclose(layout["width"], [5 / 3600, 5 / 3600, 5.0, 5.0, 5.0])
