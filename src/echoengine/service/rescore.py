"""Reviewed events scored again by a bundle: each event's score for every class, as a detection of it would have.

A bundle (any: the one that made the detections, or a new one that never
served) scores each reviewed event's recording with ``detect``'s windows
(:func:`echoengine.detection.score_files`, the clip length apart, no
overlap), and an event's score for a class is the class's highest score over
the windows whose middle lies within the event (the window that overlaps it
most when none does): the score a detection of that class over the event
would have had. For the model that made the detection, with the same
windows, that is the detection's own score.

The options are those the bundle is judged with
(:func:`echoengine.service.recorded.scoring_of`: as the store served it,
by default): ``overlap`` and ``min_window`` cut the windows; with ``top_n``
only a window's ``top_n`` best classes count for it, and classes left out by
``include``/``exclude`` never do (NaN: no detection of that class over the
event, at any threshold); ``threshold`` (None: the bundle's thresholds) says
where a score is a detection, as ``detect`` does.

Examples
--------
>>> scores = pd.DataFrame({"start": [0.0, 5.0, 10.0], "end": [5.0, 10.0, 15.0], "owl": [0.2, 0.9, 0.4]})
>>> span_scores(scores, ["owl"], 5.0, 15.0).tolist(), span_scores(scores, ["owl"], 4.0, 7.0).tolist()
([0.9], [0.9])
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.api import load_bundles, use_onnx
from echoengine.detection import DetectOptions, check_windows, score_files
from echoengine.events import check_species, detectable, detection_thresholds
from echoengine.scoring import window_scorer

__all__ = ["ScoredEvents", "detecting_scores", "score_events", "span_scores"]

logger = logging.getLogger("echoengine")


def span_scores(scores: pd.DataFrame, classes: Sequence[str], start: float, end: float, *,
                matrix: np.ndarray | None = None) -> np.ndarray:
    """Each class's highest score over the windows whose middle lies in ``[start, end]`` (else the window
    overlapping the span most); ``matrix``: the windows' scores to take (NaN: a class that cannot detect there)
    instead of ``scores[classes]``."""
    middle = (scores["start"].to_numpy() + scores["end"].to_numpy()) / 2
    inside = (middle >= start - 1e-6) & (middle <= end + 1e-6)
    if not inside.any():
        overlap = np.minimum(scores["end"].to_numpy(), end) - np.maximum(scores["start"].to_numpy(), start)
        inside = np.arange(len(scores)) == int(np.argmax(overlap))
    values = scores[list(classes)].to_numpy(dtype=float) if matrix is None else matrix
    return np.fmax.reduce(values[inside], axis=0)  # NaN only where every window is NaN


def detecting_scores(scores: pd.DataFrame, classes: Sequence[str], options: DetectOptions) -> np.ndarray:
    """The windows' scores (windows, classes), NaN where ``options`` let no detection be: a class outside a
    window's ``top_n`` best, or left out by ``include``/``exclude`` (as
    :func:`echoengine.events.window_detections` decides).

    Examples
    --------
    >>> scores = pd.DataFrame({"owl": [0.9, 0.2], "wren": [0.6, 0.7], "frog": [0.1, 0.8]})
    >>> detecting_scores(scores, ["owl", "wren", "frog"], DetectOptions(top_n=1, exclude=("frog",))).tolist()
    [[0.9, nan, nan], [nan, nan, nan]]
    """
    matrix = scores[list(classes)].to_numpy(dtype=float).copy()
    matrix[~detectable(matrix, classes, top_n=options.top_n, include=options.include, exclude=options.exclude)] = np.nan
    return matrix


class ScoredEvents:
    """A bundle's scores of reviewed events.

    Attributes
    ----------
    scores : ndarray
        (events, classes): each event's score for each class (NaN rows: its recording could not be read).
    classes : list of str
        The bundle's classes.
    thresholds : ndarray
        Each class's threshold as ``detect`` uses it with the options (``threshold``, else the bundle's
        calibrated thresholds, else 0.5).
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


def score_events(bundle: str | Path, events: pd.DataFrame, options: DetectOptions | None = None) -> ScoredEvents:
    """Score the recordings of ``events`` (a table of :mod:`echoengine.service.reviewed`) with ``bundle``, with
    ``options`` (default: ``detect``'s; see the module's text).

    Raises
    ------
    EchoError
        The bundle cannot be loaded, or the options do not fit it (an overlap of a window or more, a species
        filter naming no class).
    """
    options = options or DetectOptions()
    options = dataclasses.replace(options, onnx=use_onnx(bundle, options.onnx))
    bundles = load_bundles(bundle, onnx=options.onnx)
    scorer = window_scorer(bundles, onnx=options.onnx)
    classes = list(scorer.classes)
    check_species(classes, options.include, options.exclude)
    check_windows(scorer, options)
    result = np.full((len(events), len(classes)), np.nan)
    paths = list(dict.fromkeys(events["path"]))
    where = events["path"].to_numpy()
    spans = events[["start", "end"]].to_numpy(dtype=float)
    for index, scores in score_files(scorer, paths, options):
        if isinstance(scores, str):
            logger.warning("%s: cannot be scored (%s); its reviewed events are left out", paths[index], scores)
            continue
        matrix = detecting_scores(scores, classes, options)
        for row in np.flatnonzero(where == paths[index]):
            result[row] = span_scores(scores, classes, *spans[row], matrix=matrix)
    return ScoredEvents(result, classes, detection_thresholds(bundles, options.threshold, classes))
