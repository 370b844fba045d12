"""How good a model is, said honestly: one evaluation and one report for both kinds of labels.

:func:`evaluate` scores a bundle (or a fold ensemble) on labelled data: every
window is scored (:func:`echoengine.prediction.window_probabilities`), and
the label kind (:mod:`echoengine.labelkind`) pools the windows into file
scores and computes its metrics (:mod:`echoengine.metrics`): single-label
files are the mean of their windows, scored against their label; multi-label
recordings are their best window, scored against their boxes, per window and
per recording. :func:`write_report` writes ``metrics.json``, the per-class
tables and the figures of either kind; :func:`calibrate` chooses per-class
detection thresholds. The metric functions are importable from here too.

Examples
--------
>>> bundle = load_bundle("frogs-model")  # doctest: +SKIP
>>> metrics, probabilities = evaluate([bundle], table)  # doctest: +SKIP
>>> write_report(metrics, bundle.classes, "report")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import EchoError
from echoengine.files import write_text_atomic
from echoengine.labelkind import SINGLE_LABEL, LabelKind, label_kind
from echoengine.layout import Bundle, BundleFiles
from echoengine.metrics import (
    MULTILABEL_KEYS,
    SUMMARY_KEYS,
    classification_metrics,
    expected_calibration_error,
    f1_thresholds,
    lwlrap,
    multilabel_metrics,
)
from echoengine.prediction import window_probabilities
from echoengine.rankmetrics import rank_metrics
from echoengine.scoring import file_pooling
from echoengine.taxonomy import bundle_taxonomy

__all__ = [
    "MULTILABEL_KEYS",
    "SUMMARY_KEYS",
    "calibrate",
    "classification_metrics",
    "evaluate",
    "expected_calibration_error",
    "f1_thresholds",
    "format_report",
    "lwlrap",
    "multilabel_metrics",
    "write_report",
]


def evaluate(bundles: Sequence[Bundle], table: pd.DataFrame, *, boxes: pd.DataFrame | None = None,
             thresholds: np.ndarray | None = None, **options) -> tuple[dict, np.ndarray]:
    """Score the files of labelled data: single-label, or multi-label with ``boxes``.

    Single-label: files whose label is not among the bundle's classes are
    left out (counted in ``"skipped_unknown_labels"``), files that fail to
    load are counted in ``"failed_files"``. Multi-label: the windows of each
    recording in ``table`` are labelled from the ``boxes`` they hold, a
    recording's score for a species is its best window's, and its label
    whether any box of the species is in it; F1 is at ``thresholds``
    (default 0.5). Keyword options go to
    :func:`echoengine.prediction.window_probabilities`.

    Parameters
    ----------
    bundles : sequence of Bundle
        One bundle, or the fold bundles of a cross-validation (an ensemble).
    table : pandas.DataFrame
        Labelled files (``path``, ``label``), or recordings (``path``).
    boxes : pandas.DataFrame, optional
        A multi-label model's annotated boxes of the recordings.
    thresholds : ndarray, shape (n_classes,), optional
        Multi-label: each class's detection threshold.

    Returns
    -------
    metrics : dict
        Single-label: see :func:`echoengine.metrics.classification_metrics`;
        multi-label: ``{"window": metrics, "recording": metrics}`` (see
        :func:`echoengine.metrics.multilabel_metrics`).
    scores : ndarray, shape (n_rows, n_classes)
        The files' probabilities (rows of unknown labels left out), NaN rows for failed files.

    Examples
    --------
    >>> metrics, _ = evaluate([load_bundle("frogs-model")], table)  # doctest: +SKIP
    >>> metrics, _ = evaluate([load_bundle("soundscape-model")], recordings, boxes=boxes)  # doctest: +SKIP
    >>> metrics["recording"]["lwlrap"]  # doctest: +SKIP
    0.83
    """
    kind = label_kind(multilabel=boxes is not None)
    classes = bundles[0].classes
    known = kind.known(table, classes)
    table = table[known].reset_index(drop=True)
    windows, rows, targets = window_probabilities(bundles, table, boxes=boxes, with_targets=True, **options)
    pooling = file_pooling(bundles[0].config)
    metrics, scores = kind.score(table, classes, windows, rows, targets, thresholds=thresholds,
                                 skipped=int((~known).sum()), models=len(bundles), pooling=pooling)
    taxonomy = None if kind.multilabel else bundle_taxonomy(bundles[0])
    if taxonomy is not None:  # every rank of the tree: its accuracy, macro-F1 and confusion matrix
        loaded = ~np.isnan(scores).any(axis=1)
        metrics["taxonomy"] = rank_metrics(table["label"].to_numpy()[loaded], scores[loaded], classes, taxonomy)
    return metrics, scores


def calibrate(bundles: Sequence[Bundle], table: pd.DataFrame, *, boxes: pd.DataFrame | None = None,
              **options) -> pd.DataFrame:
    """Per-class detection thresholds from labelled files: :func:`f1_thresholds` over every window.

    Each window of a file counts as an example of the file's label, as a
    detection run scores windows; with ``boxes`` (multi-label bundles), of
    the species whose boxes it holds. Keyword options go to
    :func:`echoengine.prediction.window_probabilities`.
    """
    classes = bundles[0].classes
    if boxes is not None:
        probabilities, _, truth = window_probabilities(bundles, table, boxes=boxes, with_targets=True, **options)
        return f1_thresholds(truth, probabilities, classes)
    table = table[table["label"].isin(classes)].reset_index(drop=True)
    if table.empty:
        raise EchoError("none of the labels of the data are among the model's classes")
    probabilities, rows = window_probabilities(bundles, table, **options)
    labels = table["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()[rows]
    return f1_thresholds(labels, probabilities, classes)


def format_report(result: dict, *, kind: LabelKind = SINGLE_LABEL) -> str:
    """The scalar metrics and the per-class table of :func:`evaluate`'s metrics, as text.

    Examples
    --------
    >>> m = classification_metrics(np.array([0, 1]), np.array([[0.8, 0.2], [0.3, 0.7]]), ["a", "b"])
    >>> print(format_report(m).splitlines()[1])
      accuracy           1.0000
    """
    return kind.text(result)


def write_report(result: dict, classes: Sequence[str], out: str | Path, *, kind: LabelKind = SINGLE_LABEL,
                 history: pd.DataFrame | None = None, best_epoch: int | None = None) -> list[Path]:
    """Write ``metrics.json``, the per-class tables and the figures of :func:`evaluate`'s metrics into ``out``.

    Single-label: ``per_class.csv``, ``plots/confusion.png`` and, with a
    ``history``, ``plots/training.png``; multi-label:
    ``per_class_window.csv`` and ``per_class_recording.csv``.

    Returns
    -------
    list of Path
        The files written.

    Examples
    --------
    >>> write_report(metrics, bundle.classes, "report", history=history, best_epoch=12)  # doctest: +SKIP
    [PosixPath('report/metrics.json'), PosixPath('report/per_class.csv'), ...]
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = json.dumps(kind.summary(result), indent=kind.json_indent) + "\n"
    written = [write_text_atomic(BundleFiles(out).metrics, summary)]
    written += kind.tables(result, out)
    return written + kind.figures(result, classes, out, history=history, best_epoch=best_epoch)
