"""Class probabilities of files from one bundle or an ensemble of bundles.

A file is cut into the fixed windows of the model's clip length (hop = clip
length, the last window padded with silence), every window is scored, and
the file's probabilities are the **mean of its windows' softmax
probabilities** (a head on an embedder fitted on clips: the softmax of the
mean of its windows' logits, as a clip's are; see
:func:`echoengine.scoring.file_pooling`). Averaging probabilities (rather than taking the maximum)
makes a clip's answer the species heard through most of it, which is what a
label of a clip means; for "is the species anywhere in this long recording"
use :mod:`echoengine.detection`-style window scores instead. An ensemble (the
fold models of a cross-validation) averages the members' file probabilities.

:func:`predict_table` scores the windows of a catalog through its dataset
(evaluation: with the labels of the windows);
:func:`echoengine.scoring.predict_files` (``echoengine predict``) decodes
each file block by block and scores its windows as they come, with the
scorer of ``echoengine detect`` (PyTorch or the exported ONNX graphs), so
that memory stays bounded whatever a file's length.

Examples
--------
>>> import numpy as np
>>> clip_means(np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]]), np.array([0, 0, 1]), n_rows=3)
array([[0.6, 0.4],
       [0.1, 0.9],
       [nan, nan]])
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from echoengine.cache import FeatureCache
from echoengine.dataset import ClipDataset
from echoengine.embeddings import make_dataset
from echoengine.layout import Bundle
from echoengine.scoring import file_pooling
from echoengine.torchscorer import TorchScorer

__all__ = ["clip_maxes", "clip_means", "predict_table", "window_probabilities"]


class _Indexed(Dataset):
    """Items of a dataset with their index, so that failed items can be told apart."""

    def __init__(self, dataset: ClipDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return None if item is None else (item[0], index, item[1])


def _collate(items: list):
    usable = [item for item in items if item is not None]
    return default_collate(usable) if usable else None


def clip_means(window_probs: np.ndarray, window_rows: np.ndarray, *, n_rows: int,
               pooling: str = "mean") -> np.ndarray:
    """Average window probabilities per catalog row; rows without windows are NaN.

    ``pooling="logit-mean"`` averages their logarithms instead and
    normalises (:func:`echoengine.scoring.pool_windows`).

    Examples
    --------
    >>> clip_means(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 0]), n_rows=1, pooling="logit-mean").round(3)
    array([[0.62, 0.38]])
    """
    values = window_probs.astype(np.float64)
    if pooling == "logit-mean":
        values = np.log(np.maximum(values, 1e-30))
    sums = np.zeros((n_rows, window_probs.shape[1]))
    np.add.at(sums, window_rows, values)
    counts = np.bincount(window_rows, minlength=n_rows)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    if pooling != "logit-mean":
        return means
    weights = np.exp(means - means.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def clip_maxes(window_probs: np.ndarray, window_rows: np.ndarray, *, n_rows: int) -> np.ndarray:
    """The best window's probabilities per catalog row (multi-label pooling); rows without windows are NaN.

    Examples
    --------
    >>> clip_maxes(np.array([[0.8, 0.2], [0.4, 0.6]]), np.array([0, 0]), n_rows=2)
    array([[0.8, 0.6],
           [nan, nan]])
    """
    best = np.full((n_rows, window_probs.shape[1]), -np.inf)
    np.maximum.at(best, window_rows, window_probs)
    return np.where(np.isfinite(best), best, np.nan)


def window_probabilities(
    bundles: Sequence[Bundle],
    table: pd.DataFrame,
    *,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    progress: bool = False,
    boxes: pd.DataFrame | None = None,
    with_targets: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities of every window of every file, averaged over the bundles.

    The bundles must share their audio and front-end config (true of the
    fold models of one cross-validation), so each window's input is computed
    once for all of them.

    With ``boxes`` (multi-label models), the windows are labelled from the
    annotated boxes of their recordings, and sigmoid scores replace the softmax.

    Returns
    -------
    probabilities : ndarray, shape (n_windows, n_classes)
    rows : ndarray of int, shape (n_windows,)
        The table row of each window. Windows whose file failed to load are
        left out (and logged by the dataset's ``on_error`` policy).
    targets : ndarray, shape (n_windows, n_classes)
        Only with ``with_targets``: each window's label (one-hot, or multi-hot with NaN).
    """
    first = bundles[0]
    config = first.config
    labelled = table.assign(label="") if "label" not in table else table.assign(
        label=table["label"].where(table["label"].isin(first.classes), ""))
    dataset: ClipDataset = make_dataset(labelled, first.classes, config, train=False, cache=cache, progress=progress,
                                        boxes=boxes)
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size or config.data.batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    scorer = TorchScorer(bundles)
    probabilities, indices, targets = [], [], []
    for batch in tqdm(loader, desc="scoring", unit="batch", leave=False, disable=not progress, file=sys.stderr):
        if batch is None:
            continue
        inputs, index, target = batch
        probabilities.append(scorer.score_inputs(inputs))
        indices.append(index.numpy())
        targets.append(target.numpy())
    if not probabilities:
        empty = np.zeros((0, len(first.classes)))
        return (empty, np.zeros(0, dtype=np.int64), empty)[: 3 if with_targets else 2]
    rows = dataset.rows()[np.concatenate(indices)]
    if with_targets:
        return np.concatenate(probabilities), rows, np.concatenate(targets)
    return np.concatenate(probabilities), rows


def predict_table(bundles: Sequence[Bundle], table: pd.DataFrame, **options) -> np.ndarray:
    """File probabilities (n_rows, n_classes): each file's windows pooled as
    :func:`echoengine.scoring.file_pooling` says (the mean; multi-label models: the max); NaN when none loaded.

    Keyword options are those of :func:`window_probabilities`.
    """
    probabilities, rows = window_probabilities(bundles, table, **options)
    pooling = file_pooling(bundles[0].config)
    if pooling == "max":  # is the species anywhere in the file: its best window
        return clip_maxes(probabilities, rows, n_rows=len(table))
    return clip_means(probabilities, rows, n_rows=len(table), pooling=pooling)


# ---- files of any length, decoded block by block -----------------------------------------------------------------
