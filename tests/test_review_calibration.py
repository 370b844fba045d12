"""Thresholds from reviewed detections: the logistic fit on a known case, the threshold for a target precision,
the species kept at their threshold, and ``echoengine calibrate --reviews`` on a store and on an export
(service/reviewcal.py, service/rescore.py)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from reviewkit import reviewed_store
from servicekit import small_bundle


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _true_threshold(slope: float, intercept: float, low: float, high: float, target: float) -> float:
    """The logit u where the mean of sigmoid(slope x + intercept) over x uniform in [u, high] is ``target``
    (closed form of the integral, then bisection)."""
    def mean_above(u: float) -> float:
        integral = (np.logaddexp(0, slope * high + intercept) - np.logaddexp(0, slope * u + intercept)) / slope
        return integral / (high - u)

    lo, hi = low, high - 1e-6
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if mean_above(mid) >= target else (mid, hi)
    return hi


def test_the_logistic_fit_recovers_a_known_curve_and_its_threshold_for_a_precision():
    """Scores uniform on the logit scale over [-4, 4], confirmed with probability sigmoid(1.5 logit - 1)."""
    from echoengine.service.reviewcal import expected_precision, fit_logistic, precision_threshold

    rng = np.random.default_rng(7)
    x = rng.uniform(-4, 4, 20_000)
    scores = _sigmoid(x)
    confirmed = rng.random(len(x)) < _sigmoid(1.5 * x - 1.0)
    slope, intercept = fit_logistic(scores, confirmed)
    assert abs(slope - 1.5) < 0.08 and abs(intercept + 1.0) < 0.08, (slope, intercept)
    threshold, precision = precision_threshold(scores, slope, intercept, 0.9)
    truth = _true_threshold(1.5, -1.0, -4, 4, 0.9)
    assert abs(math.log(threshold / (1 - threshold)) - truth) < 0.15, (threshold, _sigmoid(truth))
    assert precision >= 0.9 and expected_precision(scores, slope, intercept, threshold - 0.01) < 0.9
    observed = confirmed[scores >= threshold].mean()
    assert abs(observed - 0.9) < 0.02, observed  # the share confirmed above it is the precision asked for


def test_the_threshold_is_the_lowest_observed_score_that_keeps_the_precision():
    from echoengine.service.reviewcal import expected_precision, precision_threshold

    scores = np.array([0.95, 0.9, 0.9, 0.7, 0.5, 0.3])
    # slope 1, intercept 0: the fitted probability of a score is the score itself
    assert precision_threshold(scores, 1.0, 0.0, 0.9) == (0.9, round((0.95 + 0.9 + 0.9) / 3, 6))  # ties stay together
    assert precision_threshold(scores, 1.0, 0.0, 0.85)[0] == 0.7  # (0.95 + 0.9 + 0.9 + 0.7) / 4 = 0.8625
    assert precision_threshold(scores, 1.0, 0.0, 0.99) == (None, 0.95)
    assert expected_precision(scores, 1.0, 0.0, 0.96) != expected_precision(scores, 1.0, 0.0, 0.96)  # none: NaN


class _Scored:
    """Scores of events for some classes, as ScoredEvents gives them."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.classes = list(columns)
        self.scores = np.stack(list(columns.values()), axis=1)

    def of(self, species: str) -> np.ndarray:
        return self.scores[:, self.classes.index(species)]


def test_species_with_too_few_reviews_a_flat_fit_or_an_unreachable_target_keep_their_threshold():
    """40 events detected as owl (half confirmed, the higher-scoring ones), 4 as wren; with one truth per event,
    each owl event is also a known negative for wren and frog, and the wren events for owl."""
    from echoengine.service.reviewcal import MIN_REVIEWS, review_thresholds

    rng = np.random.default_rng(3)
    owl = np.sort(rng.uniform(0.1, 0.99, 40))
    events = pd.DataFrame({"species": ["owl"] * 40 + ["wren"] * 4,
                           "verdict": ["rejected"] * 20 + ["confirmed"] * 20 + ["confirmed"] * 4,
                           "label": [""] * 20 + ["owl"] * 20 + ["wren"] * 4})
    scored = _Scored({"owl": np.r_[owl, [0.1] * 4],
                      "wren": np.r_[[0.5] * 20, np.linspace(0.7, 0.95, 20), [0.2] * 4],  # low on the wrens: slope < 0
                      "frog": np.r_[rng.uniform(0.6, 0.99, 40), [0.9] * 4]})  # every frog "detection" is wrong
    table = review_thresholds(scored, events, np.array([0.3, 0.4, 0.5]), precision=0.9).set_index("class")
    assert table.loc["owl", "source"] == "reviews" and table.loc["owl", "note"] == ""
    assert table.loc["owl", "reviewed"] == 44 and table.loc["owl", "confirmed"] == 20
    assert table.loc["owl", "slope"] > 0 and table.loc["owl", "precision"] >= 0.9
    assert table.loc["owl", "threshold"] == math.floor(table.loc["owl", "threshold"] * 1e4) / 1e4
    assert table.loc["owl", "observed"] >= 0.85 and table.loc["owl", "previous"] == 0.3
    assert table.loc["wren", "reviewed"] == 24 and table.loc["wren", "confirmed"] == 4  # the 20 rejected owls: unknown
    assert table.loc["wren", "source"] == "kept" and table.loc["wren", "threshold"] == 0.4
    assert "slope <= 0" in table.loc["wren", "note"]
    assert table.loc["frog", "confirmed"] == 0 and "too few reviews" in table.loc["frog", "note"]
    few = review_thresholds(_Scored(dict(zip(scored.classes, scored.scores[30:].T, strict=True))),
                            events.iloc[30:].reset_index(drop=True), np.array([0.3, 0.4, 0.5]))
    assert MIN_REVIEWS > 14 and (few["source"] == "kept").all() and list(few["threshold"]) == [0.3, 0.4, 0.5]


def test_an_unreachable_precision_keeps_the_threshold_with_a_note():
    from echoengine.service.reviewcal import review_thresholds

    scores = np.linspace(0.05, 0.95, 30)
    events = pd.DataFrame({"species": ["owl"] * 30, "verdict": ["rejected", "rejected", "confirmed"] * 10,
                           "label": ["", "", "owl"] * 10})
    events.loc[25:, ["verdict", "label"]] = ["confirmed", "owl"]  # the top scores confirmed: a rising curve
    table = review_thresholds(_Scored({"owl": scores}), events, np.array([0.5]), precision=0.99)
    assert table.loc[0, "source"] == "kept" and "no threshold reaches precision 0.99" in table.loc[0, "note"]


@pytest.fixture(scope="module")
def reviewed(synthetic_dataset, tmp_path_factory):
    bundle = small_bundle(synthetic_dataset, tmp_path_factory)
    return reviewed_store(bundle, tmp_path_factory.mktemp("calibrated") / "store")


def test_calibrate_from_a_store_or_an_export_writes_thresholds_tied_to_the_weights(reviewed, tmp_path, capsys):
    from echoengine.cli import main
    from echoengine.service.export import export_reviews
    from echoengine.service.reviewcal import calibrate_from_reviews
    from echoengine.thresholds import load_thresholds

    bundle = tmp_path / "bundle"
    shutil.copytree(reviewed.bundle, bundle)
    classes = (bundle / "classes.txt").read_text().split()
    (bundle / "thresholds.csv").write_text("class,threshold\n" + "".join(f"{c},0.25\n" for c in classes))
    result = calibrate_from_reviews(bundle, reviewed.store, min_reviews=2)
    assert result.previous == bundle / "thresholds.previous.csv" and "0.25" in result.previous.read_text()
    table = pd.read_csv(result.path)
    assert list(table["class"]) == classes and table["weights"].nunique() == 1
    assert (table.loc[table["source"] == "kept", "threshold"] == 0.25).all() and (table["previous"] == 0.25).all()
    assert load_thresholds(bundle, classes) is not None  # detect and serve read it as calibrate's own
    assert result.events == len(pd.read_csv(export_reviews(reviewed.store, tmp_path / "export").out / "reviews.csv"))
    again = calibrate_from_reviews(bundle, tmp_path / "export", min_reviews=2)  # the export gives the same reviews
    pd.testing.assert_frame_equal(again.thresholds, result.thresholds)
    assert main(["calibrate", str(bundle), "--reviews", str(tmp_path / "export"), "--min-reviews", "2",
                 "--precision", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "species" in printed and "reviewed" in printed and "thresholds.previous.csv" in printed


def test_reviews_of_recordings_the_bundle_trained_on_are_left_out(reviewed, tmp_path, capsys):
    from echoengine.cli import main
    from echoengine.errors import EchoError
    from echoengine.service.export import export_reviews
    from echoengine.service.reviewcal import calibrate_from_reviews

    export = export_reviews(reviewed.store, tmp_path / "export").out
    bundle = tmp_path / "bundle"
    shutil.copytree(reviewed.bundle, bundle)
    recordings = sorted((export / "recordings").glob("*.flac"))
    pd.DataFrame({"path": [str(p) for p in recordings], "label": "", "group": [p.stem for p in recordings],
                  "part": ["train"] * (len(recordings) - 1) + ["test"]}).to_csv(bundle / "splits.csv", index=False)
    result = calibrate_from_reviews(bundle, reviewed.store, min_reviews=2)
    events = pd.read_csv(export / "reviews.csv")
    assert result.events == (events["key"] == recordings[-1].stem).sum()  # only the recording it tested on
    assert result.left_out == len(events) - result.events
    with pytest.raises(EchoError, match="no reviewed detection left to calibrate on"):
        calibrate_from_reviews(bundle, reviewed.store, exclude=(export,))
    for argv, words in ((["--reviews", str(export), "--precision", "1.5"], "--precision must be in (0, 1)"),
                        (["--precision", "0.9"], "--precision go with --reviews"),
                        ([str(export), "--reviews", str(export)], "not both"),
                        ([], "give labelled DATA, or --reviews"),
                        (["--reviews", str(tmp_path)], "not the store folder of echoengine serve"),
                        (["--reviews", str(tmp_path / "nowhere")], "nowhere: no such folder")):
        assert main(["calibrate", str(bundle), *argv]) == 2
        error = capsys.readouterr().err
        assert words in error and error.count("\n") == 1, error


def test_calibrate_judges_the_bundle_as_the_store_served_it(reviewed, tmp_path, capsys):
    """A bundle served with --threshold 0.1 --top-n 1: its species without enough reviews keep 0.1, the events are
    scored with its top-n, and the output says so and warns that --threshold overrides the file written; from an
    export (no model recorded), the bundle's own thresholds and detect's defaults."""
    from echoengine.cli import main
    from echoengine.detection import DetectOptions
    from echoengine.service.export import export_reviews
    from echoengine.service.reviewcal import calibrate_from_reviews
    from echoengine.service.server import open_service

    bundle, store = tmp_path / "bundle", tmp_path / "store"
    shutil.copytree(reviewed.bundle, bundle)
    shutil.copytree(reviewed.store, store)
    export = export_reviews(store, tmp_path / "export").out
    from_export = calibrate_from_reviews(bundle, export, min_reviews=1000)  # every species kept
    assert (from_export.thresholds["threshold"] == 0.5).all() and from_export.scoring.options.top_n == 0
    assert "not served from a store" in from_export.notes() and "--threshold bundle" not in from_export.notes()
    open_service(bundle, store=store, options=DetectOptions(threshold=0.1, top_n=1), activate=True).stop()
    result = calibrate_from_reviews(bundle, store, min_reviews=1000)
    assert (result.thresholds["threshold"] == 0.1).all() and (result.thresholds["previous"] == 0.1).all()
    assert result.scoring.options.top_n == 1 and result.events == from_export.events
    assert "threshold 0.1 for every class, top-n 1 (as the store served it: model bundle/" in result.notes()
    assert "serve it with --threshold bundle" in result.notes()
    scored_all = calibrate_from_reviews(bundle, store, min_reviews=1000, overrides={"top_n": 0})
    assert scored_all.scoring.options.top_n == 0 and "given: --top-n 0" in scored_all.notes()
    assert (scored_all.thresholds["reviewed"] >= result.thresholds["reviewed"]).all()
    assert (scored_all.thresholds["reviewed"] > result.thresholds["reviewed"]).any()  # top-1 hides the others
    assert main(["calibrate", str(bundle), "--reviews", str(store), "--min-reviews", "1000", "--top-n", "2"]) == 0
    assert "given: --top-n 2" in capsys.readouterr().out
    assert main(["calibrate", str(bundle), str(export), "--top-n", "2"]) == 2
    assert "--top-n go with --reviews" in capsys.readouterr().err
