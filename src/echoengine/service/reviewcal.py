"""``echoengine calibrate BUNDLE --reviews STORE_OR_EXPORT``: per-species thresholds for a target precision.

For each species, the reviewed events whose truth for it is known
(:func:`echoengine.service.reviewed.truth`) are scored by the bundle
(:mod:`echoengine.service.rescore`), and a logistic regression of "the event
is this species" on the **logit of the score** is fitted (scikit-learn's
``LogisticRegression``, C = 100: a weak penalty that keeps a perfectly
separated species finite), the curve BirdNET-Analyzer's review tab draws by
hand. The fitted curve ``p(s)`` gives the precision of the detections above a
threshold ``t``, weighted by the scores observed::

    precision(t) = mean of p(s_i) over the reviewed scores s_i >= t

and the species' threshold is the lowest observed score (to 4 decimals, down)
where it reaches the target: a smooth estimate, where the share confirmed
above ``t`` jumps with every review near the top (that share is reported
beside it as ``observed``). A species keeps its threshold (the bundle's
``thresholds.csv``, else 0.5), with a note, when it has fewer than
``min_reviews`` reviews or fewer than :data:`MIN_EACH` of either verdict, when
the score does not rise with confirmation (slope <= 0), or when no threshold
reaches the target. Events of recordings the bundle trained on (its
``splits.csv``), and of exports given to leave out, are not used.

From a store, the events are scored with the options the store served the
bundle with (:func:`echoengine.service.recorded.scoring_of`: its windows,
``--top-n`` and species filters), and a species kept keeps the threshold it
was served with (a recorded ``--threshold``, else the bundle's own); from an
export (which records no model), with ``detect``'s defaults. Options given
explicitly (``top_n``, ``overlap``) override both.

Examples
--------
>>> scores = np.array([0.2, 0.4, 0.6, 0.8])
>>> round(expected_precision(scores, 1.0, 0.0, 0.5), 4)  # the mean of 0.6 and 0.8: p(s) = s when the fit is s
0.7
>>> precision_threshold(scores, 1.0, 0.0, 0.65)
(0.6, 0.7)
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import EchoError
from echoengine.files import write_atomic
from echoengine.layout import BundleFiles
from echoengine.service.recorded import Scoring, scoring_of
from echoengine.service.rescore import score_events
from echoengine.service.reviewed import REVIEWS_FILE, held_out, reviewed_events, truth
from echoengine.thresholds import DEFAULT_THRESHOLD, load_thresholds, write_thresholds

__all__ = ["DEFAULT_PRECISION", "MIN_EACH", "MIN_REVIEWS", "ReviewCalibration", "calibrate_from_reviews",
           "expected_precision", "fit_logistic", "precision_threshold", "review_thresholds"]

logger = logging.getLogger("echoengine")
DEFAULT_PRECISION = 0.9
#: Reviews of a species below which its threshold is kept.
MIN_REVIEWS = 20
#: Reviews of each verdict (the species, not the species) below which its threshold is kept.
MIN_EACH = 3
PREVIOUS_FILE = "thresholds.previous.csv"
_EPSILON = 1e-4


def _logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=float), _EPSILON, 1 - _EPSILON)
    return np.log(p / (1 - p))


def _fitted(scores: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    return 1 / (1 + np.exp(-(slope * _logit(scores) + intercept)))


def fit_logistic(scores: np.ndarray, confirmed: np.ndarray) -> tuple[float, float]:
    """The slope and intercept of ``P(confirmed) = sigmoid(slope * logit(score) + intercept)`` (scikit-learn).

    Examples
    --------
    >>> scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.25, 0.75])
    >>> slope, _ = fit_logistic(scores, np.array([0, 0, 0, 1, 1, 1, 1, 0]))
    >>> slope > 0
    True
    """
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=100.0, max_iter=1000).fit(_logit(scores)[:, None], np.asarray(confirmed, int))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def expected_precision(scores: np.ndarray, slope: float, intercept: float, threshold: float) -> float:
    """The precision of the detections scoring at least ``threshold``: the fitted curve's mean over them."""
    above = np.asarray(scores, dtype=float) >= threshold
    return float(_fitted(np.asarray(scores)[above], slope, intercept).mean()) if above.any() else math.nan


def precision_threshold(scores: np.ndarray, slope: float, intercept: float,
                        target: float) -> tuple[float | None, float]:
    """The lowest observed score (floored to 4 decimals) whose :func:`expected_precision` reaches ``target``,
    and that precision; ``(None, best precision)`` when none does (a positive slope assumed)."""
    ordered = np.sort(np.asarray(scores, dtype=float))[::-1]
    cumulative = np.cumsum(_fitted(ordered, slope, intercept)) / np.arange(1, len(ordered) + 1)
    last_of_ties = np.r_[ordered[1:] != ordered[:-1], True]  # a threshold keeps every score equal to it
    reached = np.flatnonzero(last_of_ties & (cumulative >= target))
    if not len(reached):
        return None, round(float(cumulative[0]), 6) if len(cumulative) else math.nan
    k = reached[-1]
    threshold = math.floor(ordered[k] * 10_000) / 10_000
    return threshold, round(expected_precision(scores, slope, intercept, threshold), 6)


def _fit_species(scores: np.ndarray, known: np.ndarray, *, target: float, min_reviews: int,
                 previous: float) -> dict:
    """One species' row of :func:`review_thresholds`."""
    keep = ~np.isnan(known) & ~np.isnan(scores)
    scores, known = scores[keep], known[keep].astype(int)
    row = {"threshold": previous, "previous": previous, "reviewed": len(known), "confirmed": int(known.sum()),
           "slope": math.nan, "intercept": math.nan, "precision": math.nan, "observed": math.nan, "source": "kept"}
    if len(known) < min_reviews or min(known.sum(), len(known) - known.sum()) < MIN_EACH:
        return {**row, "note": f"too few reviews (fewer than {min_reviews}, or than {MIN_EACH} of either verdict)"}
    slope, intercept = fit_logistic(scores, known)
    row.update(slope=slope, intercept=intercept)
    if slope <= 0:
        return {**row, "note": "the score does not rise with confirmation (slope <= 0)"}
    threshold, precision = precision_threshold(scores, slope, intercept, target)
    if threshold is None:
        return {**row, "note": f"no threshold reaches precision {target:g} (at most {precision:.3f})"}
    observed = float(known[scores >= threshold].mean())
    return {**row, "threshold": threshold, "precision": precision, "observed": observed, "source": "reviews",
            "note": ""}


def review_thresholds(scored, events: pd.DataFrame, previous: np.ndarray, *, precision: float = DEFAULT_PRECISION,
                      min_reviews: int = MIN_REVIEWS) -> pd.DataFrame:
    """Per class of ``scored`` (:class:`~echoengine.service.rescore.ScoredEvents`): reviews, fit, threshold.

    Returns
    -------
    DataFrame
        ``class, threshold, previous, reviewed, confirmed, slope, intercept,
        precision`` (fitted, at the threshold), ``observed`` (the share
        confirmed above it), ``source`` (reviews or kept), ``note``.
    """
    rows = [{"class": name, **_fit_species(scored.of(name), truth(events, name), target=precision,
                                           min_reviews=min_reviews, previous=float(previous[i]))}
            for i, name in enumerate(scored.classes)]
    return pd.DataFrame(rows)


def _previous(folder: Path, classes: list[str]) -> np.ndarray:
    """The bundle's thresholds now (its thresholds.csv, else 0.5; 0.5 with a warning when that file is stale)."""
    try:
        found = load_thresholds(folder, classes)
    except EchoError as exc:
        logger.warning("%s; the classes without enough reviews get %s", exc, DEFAULT_THRESHOLD)
        found = None
    return found if found is not None else np.full(len(classes), DEFAULT_THRESHOLD)


@dataclass
class ReviewCalibration:
    """Per-species thresholds from reviews, the file written, where the old one was kept, the events used."""

    thresholds: pd.DataFrame
    path: Path
    previous: Path | None
    events: int
    left_out: int
    scoring: Scoring | None = None  # the options the events were scored with, and where they come from

    def notes(self) -> str:
        """What the thresholds were judged with, and a warning when the store serves the bundle with one
        ``--threshold`` (which overrides the file written)."""
        if self.scoring is None:
            return ""
        text = f"scored with {self.scoring.source}"
        fixed = self.scoring.options.threshold
        if fixed is not None:
            text += (f"\nnote: the store serves this bundle with --threshold {fixed:g}, which overrides "
                     f"{self.path.name}: serve it with --threshold bundle to detect at these thresholds")
        return text

    def text(self) -> str:
        """The table as ``echoengine calibrate --reviews`` prints it."""
        shown = self.thresholds[["class", "reviewed", "confirmed", "slope", "threshold", "precision", "observed",
                                 "previous", "note"]].rename(columns={"class": "species"})
        return shown.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="-")


def calibrate_from_reviews(bundle: str | Path, source: str | Path, *, db: str | None = None,
                           precision: float = DEFAULT_PRECISION, min_reviews: int = MIN_REVIEWS,
                           exclude: tuple[str | Path, ...] = (), overrides: dict | None = None) -> ReviewCalibration:
    """Fit each species' threshold for ``precision`` on the reviews of a store or export; write them into the bundle.

    The bundle's ``thresholds.csv`` is replaced whole (atomically); the one it
    replaces is kept as ``thresholds.previous.csv``, and each row keeps its
    previous threshold in the ``previous`` column.

    The events are scored with the options the store served the bundle with
    (none from an export), ``overrides`` on top (see the module's text).

    Raises
    ------
    EchoError
        A precision outside (0, 1), ``min_reviews`` below 2, a source that is
        neither a store nor an export, options that do not fit the bundle, or
        no reviewed event the bundle did not train on.
    """
    if not 0 < precision < 1:
        raise EchoError(f"--precision must be in (0, 1), got {precision}")
    if min_reviews < 2:
        raise EchoError(f"--min-reviews must be at least 2, got {min_reviews}")
    events, left_out = held_out(reviewed_events(source, db), bundles=[bundle], exclude=exclude)
    if events.empty:
        raise EchoError(f"{source}: no reviewed detection left to calibrate on ({left_out} are of recordings "
                        f"{bundle} trained on or of --exclude exports)")
    store = None if (Path(source) / REVIEWS_FILE).is_file() else source
    scoring = scoring_of(bundle, store, db, overrides=overrides)
    scored = score_events(bundle, events, scoring.options)
    folder = Path(bundle)
    previous = scored.thresholds if scoring.options.threshold is not None else _previous(folder, scored.classes)
    table = review_thresholds(scored, events, previous, precision=precision, min_reviews=min_reviews)
    current, kept = BundleFiles(folder).thresholds, None
    if current.is_file():
        kept = write_atomic(folder / PREVIOUS_FILE, lambda temporary: shutil.copyfile(current, temporary))
    path = write_thresholds(folder, table)
    return ReviewCalibration(table, path, kept, len(events), left_out, scoring)
