"""Metrics of predictions against labels: single-label and multi-label, pure functions of arrays.

:func:`classification_metrics` scores file probabilities against labels:
accuracy, balanced accuracy, macro-F1, top-5 accuracy, LWLRAP, macro mAP,
expected calibration error, per-class precision / recall / F1 / AP and the
confusion matrix. With one label per file, label-weighted LRAP (LWLRAP) equals
scikit-learn's sample-averaged ``label_ranking_average_precision_score``,
which is what is computed. :func:`multilabel_metrics` scores multi-hot
labels (windows or recordings): LWLRAP, macro and micro mAP and per-class
F1 at thresholds. :func:`f1_thresholds` chooses each class's threshold.

Examples
--------
>>> import numpy as np
>>> probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]])
>>> m = classification_metrics(np.array([0, 1, 2]), probs, ["a", "b", "c"])
>>> m["accuracy"], round(m["lwlrap"], 4)
(0.6667, 0.8333)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

__all__ = [
    "MULTILABEL_KEYS",
    "SUMMARY_KEYS",
    "classification_metrics",
    "expected_calibration_error",
    "f1_thresholds",
    "lwlrap",
    "multilabel_metrics",
]

# The scalars a cross-validation summarises (mean, std over folds): single-label, and multi-label per level.
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "top5_accuracy", "lwlrap", "map", "ece")
#: The baseline's scores beside a cross-validated model's (:mod:`echoengine.baseline`): ``baseline_`` + a summary key.
BASELINE_KEYS = ("baseline_accuracy", "baseline_macro_f1", "baseline_ece")
MULTILABEL_KEYS = ("lwlrap", "map_macro", "map_micro", "macro_f1")


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

    Examples
    --------
    >>> truth, scores = np.array([[1, 0], [0, 1], [1, 0]]), np.array([[.9, .2], [.3, .8], [.4, .6]])
    >>> m = multilabel_metrics(truth, scores, ["a", "b"])
    >>> m["lwlrap"], m["map_macro"], m["samples"]
    (0.8333, 1.0, 3)
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
        precision = recall = f1 = np.nan  # no known label of the class (data.unlabeled = "ignore"): no score
        if mine.any():
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
