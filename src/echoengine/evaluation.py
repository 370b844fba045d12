"""How good a model is, said honestly: metrics, a per-class table and plots.

:func:`classification_metrics` scores file probabilities against labels:
accuracy, balanced accuracy, macro-F1, top-5 accuracy, LWLRAP, macro mAP,
expected calibration error, per-class precision / recall / F1 / AP and the
confusion matrix. With one label per file, label-weighted LRAP (LWLRAP) equals
scikit-learn's sample-averaged ``label_ranking_average_precision_score``,
which is what is computed. A file's probabilities are the mean over its
windows (see :mod:`echoengine.prediction`).

Examples
--------
>>> import numpy as np
>>> probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]])
>>> m = classification_metrics(np.array([0, 1, 2]), probs, ["a", "b", "c"])
>>> m["accuracy"], round(m["lwlrap"], 4)
(0.6667, 0.8333)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from echoengine import plots
from echoengine.bundle import METRICS_FILE, PER_CLASS_FILE, Bundle
from echoengine.errors import EchoError
from echoengine.files import write_text_atomic
from echoengine.prediction import clip_maxes, predict_table, window_probabilities

__all__ = [
    "calibrate",
    "classification_metrics",
    "evaluate",
    "evaluate_multilabel",
    "expected_calibration_error",
    "f1_thresholds",
    "format_report",
    "lwlrap",
    "multilabel_metrics",
    "write_multilabel_report",
    "write_report",
]


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> float:
    """ECE of the top prediction: the bin-weighted gap between confidence and accuracy.

    Confidences are binned into ``bins`` equal-width bins on [0, 1]; the ECE
    is the mean over files of |accuracy of the bin - mean confidence of the
    bin| (Guo et al. 2017).

    Examples
    --------
    >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
    0.4
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in np.unique(which):
        inside = which == b
        gap += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return round(float(gap / len(labels)), 6)


def _balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean recall over the classes present (predictions of absent classes count as errors, silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "y_pred contains classes not in y_true"
        return skm.balanced_accuracy_score(labels, predicted)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """All the single-label metrics of one set of predictions.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        True class index per file.
    probabilities : ndarray, shape (n, n_classes)
    classes : sequence of str

    Returns
    -------
    dict
        Rounded scalars (``accuracy``, ``balanced_accuracy``, ``macro_f1``,
        ``top5_accuracy``, ``lwlrap``, ``map``, ``ece``, ``n``), a
        ``per_class`` list and the ``confusion_matrix`` (rows true, columns
        predicted). Macro averages run over the classes present in ``labels``.
    """
    n_classes = len(classes)
    everything = np.arange(n_classes)
    predicted = probabilities.argmax(axis=1)
    present = np.unique(labels)
    one_hot = np.eye(n_classes)[labels]
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=everything, zero_division=0
    )
    average_precision = np.full(n_classes, np.nan)
    for c in present:
        average_precision[c] = skm.average_precision_score(one_hot[:, c], probabilities[:, c])
    true_scores = probabilities[np.arange(len(labels)), labels]
    rank = (probabilities > true_scores[:, None]).sum(axis=1)  # 0 for the top prediction
    result = {
        "n": len(labels),
        "accuracy": skm.accuracy_score(labels, predicted),
        "balanced_accuracy": _balanced_accuracy(labels, predicted),
        "macro_f1": f1[present].mean(),
        "top5_accuracy": (rank < 5).mean(),
        "lwlrap": skm.label_ranking_average_precision_score(one_hot, probabilities),
        "map": np.nanmean(average_precision),
        "ece": expected_calibration_error(probabilities, labels),
    }
    result = {key: round(float(value), 4) if key != "n" else value for key, value in result.items()}
    result["per_class"] = [
        {"class": name, "precision": round(float(precision[c]), 4), "recall": round(float(recall[c]), 4),
         "f1": round(float(f1[c]), 4), "support": int(support[c]),
         "ap": None if np.isnan(average_precision[c]) else round(float(average_precision[c]), 4)}
        for c, name in enumerate(classes)
    ]
    result["confusion_matrix"] = skm.confusion_matrix(labels, predicted, labels=everything).tolist()
    return result


def evaluate(bundles: Sequence[Bundle], table: pd.DataFrame, **options) -> tuple[dict, np.ndarray]:
    """Predict the files of a labelled catalog and score the predictions.

    Files whose label is not among the bundle's classes are left out (and
    counted in ``"skipped_unknown_labels"``); files that fail to load are
    counted in ``"failed_files"``. Keyword options go to
    :func:`echoengine.prediction.window_probabilities`.

    Returns
    -------
    metrics : dict
    probabilities : ndarray, shape (n_known, n_classes)
        For the rows whose label is a class of the model, in order; NaN rows for failed files.
    """
    classes = bundles[0].classes
    known = table["label"].isin(classes).to_numpy()
    if not known.any():
        raise EchoError("none of the labels of the data are among the model's classes")
    table = table[known].reset_index(drop=True)
    probabilities = predict_table(bundles, table, **options)
    loaded = ~np.isnan(probabilities).any(axis=1)
    labels = table["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
    result = classification_metrics(labels[loaded], probabilities[loaded], classes)
    result["skipped_unknown_labels"] = int((~known).sum())
    result["failed_files"] = int((~loaded).sum())
    result["clip_pooling"] = "mean of window probabilities"
    result["models"] = len(bundles)
    return result, probabilities


def f1_thresholds(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], *,
                  default: float = 0.5) -> pd.DataFrame:
    """The F1-optimal threshold of each class, one class against the rest.

    Parameters
    ----------
    labels : ndarray of int, shape (n,), or multi-hot (n, n_classes) (NaN counts as absent)
    probabilities : ndarray, shape (n, n_classes)

    Returns
    -------
    DataFrame
        ``class, threshold, f1, precision, recall, positives``; a class with
        no positive example keeps ``default`` (and NaN scores).

    Examples
    --------
    >>> t = f1_thresholds(np.array([0, 0, 1, 1]), np.array([[.9, .1], [.6, .4], [.7, .3], [.2, .8]]), ["a", "b"])
    >>> t[["class", "threshold", "f1"]].round(3).to_dict("records")
    [{'class': 'a', 'threshold': 0.6, 'f1': 0.8}, {'class': 'b', 'threshold': 0.3, 'f1': 0.8}]
    """
    rows = []
    for c, name in enumerate(classes):
        if labels.ndim == 1:
            positive, scores = labels == c, probabilities[:, c]
        else:  # multi-hot: unknown labels (NaN) are left out
            mine = ~np.isnan(labels[:, c])
            positive, scores = labels[mine, c] > 0.5, probabilities[mine, c]
        if not positive.any():
            rows.append({"class": name, "threshold": default, "f1": np.nan, "precision": np.nan,
                         "recall": np.nan, "positives": 0})
            continue
        precision, recall, thresholds = skm.precision_recall_curve(positive, scores)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1]))
        rows.append({"class": name, "threshold": float(thresholds[best]), "f1": float(f1[best]),
                     "precision": float(precision[best]), "recall": float(recall[best]),
                     "positives": int(positive.sum())})
    return pd.DataFrame(rows)


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


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Label-weighted label-ranking average precision (the metric of the Freesound and RFCx challenges).

    For every positive label of every sample, the precision of the sample's
    ranking at that label; averaged per class, and over classes weighted by
    their share of positive labels. It equals scikit-learn's
    ``label_ranking_average_precision_score`` with each sample weighted by
    its number of positive labels.

    Returns
    -------
    overall : float
    per_class : ndarray, shape (n_classes,)
        NaN for a class with no positive label.
    weights : ndarray, shape (n_classes,)
        Each class's share of the positive labels.

    Examples
    --------
    >>> truth = np.array([[1, 0, 1], [0, 1, 0]])
    >>> scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.3]])
    >>> round(lwlrap(truth, scores)[0], 4)
    0.8889
    """
    truth = np.asarray(truth) > 0
    n, n_classes = truth.shape
    precision_sums = np.zeros(n_classes)
    for i in range(n):
        positives = np.flatnonzero(truth[i])
        if not len(positives):
            continue
        # as scikit-learn: a label's rank counts every label scored at least as high (ties rank low)
        at_least = scores[i][None, :] >= scores[i][positives][:, None]  # (positives, classes)
        ranks = at_least.sum(axis=1)
        hits = (at_least & truth[i][None, :]).sum(axis=1)
        precision_sums[positives] += hits / ranks
    counts = truth.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, precision_sums / np.maximum(counts, 1), np.nan)
    weights = counts / max(counts.sum(), 1)
    return float(np.nansum(per_class * weights)), per_class, weights


def multilabel_metrics(truth: np.ndarray, scores: np.ndarray, classes: Sequence[str], *,
                       thresholds: np.ndarray | None = None) -> dict:
    """LWLRAP, macro and micro mAP, and per-class AP, F1, precision and recall at the thresholds.

    Unknown labels (NaN) count as absent. Macro averages run over the classes
    with positives. ``thresholds`` default to 0.5.
    """
    labels = np.asarray(truth, dtype=float)
    known = ~np.isnan(labels)  # unknown labels (data.unlabeled = "ignore") are left out, per class
    truth = np.nan_to_num(labels) > 0.5
    thresholds = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds)
    overall, per_class_lwlrap, _ = lwlrap(truth, scores)
    predicted = scores >= thresholds[None, :]
    present = truth.any(axis=0)
    rows = []
    for c, name in enumerate(classes):
        mine = known[:, c]
        ap = float(skm.average_precision_score(truth[mine, c], scores[mine, c])) if present[c] else np.nan
        precision, recall, f1, _ = skm.precision_recall_fscore_support(
            truth[mine, c], predicted[mine, c], average="binary", zero_division=0)
        rows.append({"class": name, "ap": ap, "f1": float(f1), "precision": float(precision),
                     "recall": float(recall), "lwlrap": float(per_class_lwlrap[c]),
                     "threshold": float(thresholds[c]), "support": int(truth[:, c].sum())})
    per_class = pd.DataFrame(rows)
    flat = known & present[None, :]
    micro = float(skm.average_precision_score(truth[flat], scores[flat])) if present.any() else np.nan
    return {"lwlrap": round(overall, 4), "map_macro": round(float(per_class["ap"].mean()), 4),
            "map_micro": round(micro, 4), "macro_f1": round(float(per_class.loc[present, "f1"].mean()), 4),
            "samples": len(truth), "per_class": per_class}


def evaluate_multilabel(bundles: Sequence[Bundle], recordings: pd.DataFrame, boxes: pd.DataFrame, *,
                        thresholds: np.ndarray | None = None, **options) -> dict:
    """Multi-label scores of annotated recordings, per window and per recording.

    Windows are the regular grid of clip-length windows, labelled from the
    boxes they hold; a recording's score for a species is its best window's,
    and its label whether any box of the species is in it.

    Returns
    -------
    dict
        ``{"window": metrics, "recording": metrics}`` (see :func:`multilabel_metrics`).
    """
    classes = bundles[0].classes
    scores, rows, truth = window_probabilities(bundles, recordings, boxes=boxes, with_targets=True, **options)
    result = {"window": multilabel_metrics(truth, scores, classes, thresholds=thresholds)}
    best = clip_maxes(scores, rows, n_rows=len(recordings))
    present = np.nan_to_num(clip_maxes(np.nan_to_num(truth), rows, n_rows=len(recordings)))
    loaded = ~np.isnan(best).any(axis=1)
    result["recording"] = multilabel_metrics(present[loaded], best[loaded], classes, thresholds=thresholds)
    return result


MULTILABEL_KEYS = ("lwlrap", "map_macro", "map_micro", "macro_f1")


def write_multilabel_report(metrics: dict, out: str | Path, *, evaluated_on: str = "", **extra) -> str:
    """Write ``metrics.json`` and ``per_class_{window,recording}.csv`` into ``out``; return the report as text."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {level: {k: v for k, v in m.items() if k != "per_class"} for level, m in metrics.items()}
    summary.update(evaluated_on=evaluated_on, **extra)
    write_text_atomic(out / METRICS_FILE, json.dumps(summary, indent=1) + "\n")
    for level, m in metrics.items():
        m["per_class"].round(4).to_csv(out / f"per_class_{level}.csv", index=False)
    lines = [f"{'':10} {'LWLRAP':>8} {'mAP macro':>10} {'mAP micro':>10} {'macro-F1':>9} {'samples':>8}"]
    for level, m in metrics.items():
        lines.append(f"{level:10} {m['lwlrap']:>8.4f} {m['map_macro']:>10.4f} {m['map_micro']:>10.4f} "
                     f"{m['macro_f1']:>9.4f} {m['samples']:>8}")
    per_class = metrics["recording"]["per_class"].sort_values("ap", ascending=False)
    lines += ["", "per class (recording level; F1 at the threshold):",
              per_class[["class", "ap", "f1", "precision", "recall", "threshold", "support"]].round(3).to_string(
                  index=False)]
    return "\n".join(lines)


SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "lwlrap", "map", "ece")


def format_report(result: dict) -> str:
    """The scalar metrics and the per-class table as text."""
    failed = result.get("failed_files")
    lines = [f"{result['n']} files" + (f" ({failed} failed to load)" if failed else "")]
    lines += [f"  {key:<18} {result[key]:.4f}" for key in SUMMARY_KEYS if key in result]
    width = max([len(row["class"]) for row in result["per_class"]] + [5])
    lines.append(f"\n  {'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>6} {'ap':>6} {'support':>7}")
    for row in result["per_class"]:
        ap = "-" if row["ap"] is None else f"{row['ap']:.3f}"
        lines.append(f"  {row['class']:<{width}} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} "
                     f"{ap:>6} {row['support']:>7}")
    return "\n".join(lines)


def write_report(result: dict, classes: Sequence[str], out: str | Path, *, history: pd.DataFrame | None = None,
                 best_epoch: int | None = None) -> list[Path]:
    """Write ``metrics.json``, ``per_class.csv`` and the plots to ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(out / METRICS_FILE, json.dumps(result, indent=2) + "\n"), out / PER_CLASS_FILE]
    pd.DataFrame(result["per_class"]).to_csv(written[1], index=False)
    written.append(plots.plot_confusion(np.array(result["confusion_matrix"]), classes, out / "plots" / "confusion.png"))
    if history is not None and len(history):
        written.append(plots.plot_history(history, out / "plots" / "training.png", best_epoch=best_epoch))
    return written
