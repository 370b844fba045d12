"""Reviewed events scored again by a bundle: each event's score for every class, as a detection of it would have.

A bundle (any: the one that made the detections, or a new one that never
served) scores each reviewed event's recording with ``detect``'s windows
(:func:`echoengine.detection.score_files`, the clip length apart, no
overlap), and an event's score for a class is the class's highest score over
the windows whose middle lies within the event (the window that overlaps it
most when none does): the score a detection of that class over the event
would have had. For the model that made the detection, with the same
windows, that is the detection's own score.

Examples
--------
>>> scores = pd.DataFrame({"start": [0.0, 5.0, 10.0], "end": [5.0, 10.0, 15.0], "owl": [0.2, 0.9, 0.4]})
>>> span_scores(scores, ["owl"], 5.0, 15.0).tolist(), span_scores(scores, ["owl"], 4.0, 7.0).tolist()
([0.9], [0.9])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.api import load_bundles, use_onnx
from echoengine.detection import DetectOptions, score_files
from echoengine.events import detection_thresholds
from echoengine.scoring import window_scorer

__all__ = ["ScoredEvents", "score_events", "span_scores"]

logger = logging.getLogger("echoengine")


def span_scores(scores: pd.DataFrame, classes: Sequence[str], start: float, end: float) -> np.ndarray:
    """Each class's highest score over the windows whose middle lies in ``[start, end]`` (else the window
    overlapping the span most)."""
    middle = (scores["start"].to_numpy() + scores["end"].to_numpy()) / 2
    inside = (middle >= start - 1e-6) & (middle <= end + 1e-6)
    if not inside.any():
        overlap = np.minimum(scores["end"].to_numpy(), end) - np.maximum(scores["start"].to_numpy(), start)
        inside = np.arange(len(scores)) == int(np.argmax(overlap))
    return scores.loc[inside, list(classes)].to_numpy(dtype=float).max(axis=0)


class ScoredEvents:
    """A bundle's scores of reviewed events.

    Attributes
    ----------
    scores : ndarray
        (events, classes): each event's score for each class (NaN rows: its recording could not be read).
    classes : list of str
        The bundle's classes.
    thresholds : ndarray
        The bundle's thresholds as ``detect`` uses them (calibrated, else 0.5).
    """

    def __init__(self, scores: np.ndarray, classes: list[str], thresholds: np.ndarray) -> None:
        self.scores, self.classes, self.thresholds = scores, classes, thresholds

    def of(self, species: str) -> np.ndarray:
        """The events' scores for ``species`` (NaN everywhere when the bundle does not know it)."""
        if species not in self.classes:
            return np.full(len(self.scores), np.nan)
        return self.scores[:, self.classes.index(species)]

    def threshold(self, species: str) -> float:
        """The bundle's threshold for ``species`` (NaN when it does not know it)."""
        return float(self.thresholds[self.classes.index(species)]) if species in self.classes else float("nan")


def score_events(bundle: str | Path, events: pd.DataFrame) -> ScoredEvents:
    """Score the recordings of ``events`` (a table of :mod:`echoengine.service.reviewed`) with ``bundle``.

    Raises
    ------
    EchoError
        The bundle cannot be loaded.
    """
    onnx = use_onnx(bundle)
    bundles = load_bundles(bundle, onnx=onnx)
    scorer = window_scorer(bundles, onnx=onnx)
    classes = list(scorer.classes)
    result = np.full((len(events), len(classes)), np.nan)
    paths = list(dict.fromkeys(events["path"]))
    where = events["path"].to_numpy()
    spans = events[["start", "end"]].to_numpy(dtype=float)
    for index, scores in score_files(scorer, paths, DetectOptions(onnx=onnx)):
        if isinstance(scores, str):
            logger.warning("%s: cannot be scored (%s); its reviewed events are left out", paths[index], scores)
            continue
        for row in np.flatnonzero(where == paths[index]):
            result[row] = span_scores(scores, classes, *spans[row])
    return ScoredEvents(result, classes, detection_thresholds(bundles, None, classes))
