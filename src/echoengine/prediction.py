"""Class probabilities of files from one bundle or an ensemble of bundles.

A file is cut into the fixed windows of the model's clip length (hop = clip
length, the last window padded with silence), every window is scored, and
the file's probabilities are the **mean of its windows' softmax
probabilities**. Averaging probabilities (rather than taking the maximum)
makes a clip's answer the species heard through most of it, which is what a
label of a clip means; for "is the species anywhere in this long recording"
use :mod:`echoengine.detection`-style window scores instead. An ensemble (the
fold models of a cross-validation) averages the members' file probabilities.

:func:`predict_table` scores the windows of a catalog through its dataset
(evaluation: with the labels of the windows); :func:`predict_files`
(``echoengine predict``) decodes each file block by block and scores its
windows as they come (:func:`echoengine.scoring.score_stream`, with the
scorer of ``echoengine detect``: PyTorch or the exported ONNX graphs), so
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
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from echoengine import audio
from echoengine.bundle import Bundle
from echoengine.cache import FeatureCache, quantise_image
from echoengine.dataset import ClipDataset
from echoengine.embeddings import make_dataset
from echoengine.errors import AudioError
from echoengine.kinds import IMAGES
from echoengine.scoring import WindowScorer, activation, check_ensemble, pool_windows, score_stream

__all__ = ["activation", "check_ensemble", "clip_maxes", "clip_means", "pool_windows", "predict_files",
           "predict_table", "stream_window_probabilities", "window_probabilities"]


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


def clip_means(window_probs: np.ndarray, window_rows: np.ndarray, *, n_rows: int) -> np.ndarray:
    """Average window probabilities per catalog row; rows without windows are NaN."""
    sums = np.zeros((n_rows, window_probs.shape[1]))
    np.add.at(sums, window_rows, window_probs)
    counts = np.bincount(window_rows, minlength=n_rows)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


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
    check_ensemble(bundles)
    first = bundles[0]
    config = first.config
    labelled = table.assign(label="") if "label" not in table else table.assign(
        label=table["label"].where(table["label"].isin(first.classes), ""))
    dataset: ClipDataset = make_dataset(labelled, first.classes, config, train=False, cache=cache, progress=progress,
                                        boxes=boxes)
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size or config.data.batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    scorer = WindowScorer(bundles)
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
    """File probabilities (n_rows, n_classes): the mean over each file's windows (multi-label models:
    the max); NaN when none loaded.

    Keyword options are those of :func:`window_probabilities`.
    """
    probabilities, rows = window_probabilities(bundles, table, **options)
    if bundles[0].config.model.multilabel:  # is the species anywhere in the file: its best window
        return clip_maxes(probabilities, rows, n_rows=len(table))
    return clip_means(probabilities, rows, n_rows=len(table))


# ---- files of any length, decoded block by block -----------------------------------------------------------------
def stream_window_probabilities(scorer: WindowScorer, path: str | Path, *, batch_size: int | None = None,
                                block_seconds: float = 60.0, cache: FeatureCache | None = None) -> np.ndarray:
    """Class probabilities (n_windows, n_classes) of the windows of one file, decoded and scored block by block.

    The windows are those of :func:`predict_table` (the clip length apart,
    the last one padded with silence), cut as ``echoengine detect`` cuts
    them (:func:`echoengine.scoring.score_stream`); only a block of audio and
    a batch of windows are held at a time. With a ``cache``, the images of
    CNN bundles are read from it and stored into it, under keys of their own
    (not the dataset's ranged reads).

    Raises
    ------
    AudioError
        The file cannot be decoded.

    Examples
    --------
    >>> scorer = WindowScorer([load_bundle("bundle")])  # doctest: +SKIP
    >>> stream_window_probabilities(scorer, "dawn_chorus.flac").shape  # doctest: +SKIP
    (720, 4)
    """
    blocks = audio.stream(path, scorer.config.audio, block_seconds=block_seconds)
    return score_stream(scorer, blocks, batch_size=batch_size, inputs=partial(_window_inputs, scorer, path, cache))


# Cache entries of windows cut from a streamed decode: their own keys, since a streamed decode equals the
# ranged reads of datasets only within resampling rounding (no run's values depend on which ran first).
_STREAMED = -2


def _window_inputs(scorer: WindowScorer, path: str | Path, cache: FeatureCache | None, windows: np.ndarray,
                   starts: list[int]) -> torch.Tensor:
    """The scorer's inputs of windows; the images of CNN bundles through the cache when there is one.

    Images are rounded as the cache stores them (:func:`~echoengine.cache.quantise_image`) whether
    they come from it or not, so a cold cache, a warm one and none give the same probabilities.
    """
    if scorer.kind != IMAGES:
        return scorer.prepare(windows)
    keys, images = [], [None] * len(windows)
    if cache is not None:
        keys = [cache.key(path, start=start, length=scorer.clip_samples, variant=_STREAMED) for start in starts]
        images = [cache.get(key) for key in keys]
    missing = [i for i, image in enumerate(images) if image is None]
    if missing:
        for i, image in zip(missing, scorer.prepare(windows[missing])[:, 0].numpy(), strict=True):
            images[i] = quantise_image(image)
            if cache is not None:
                cache.put(keys[i], images[i])
    channels = scorer.config.frontend.image_channels
    return torch.from_numpy(np.stack(images)).unsqueeze(1).expand(-1, channels, -1, -1)


def predict_files(bundles: Sequence[Bundle], paths: Sequence[str | Path], *, onnx: bool = False,
                  cache: FeatureCache | None = None, batch_size: int | None = None, block_seconds: float = 60.0,
                  progress: bool = False, log: Callable[[str], None] = print) -> np.ndarray:
    """File probabilities (n_files, n_classes) of audio files of any length, in bounded memory.

    The probabilities of :func:`predict_table`: the mean of the windows'
    (multi-label models: the max), averaged over an ensemble's members. Each
    file is decoded block by block and its windows are scored in batches as
    they come, by the scorer of ``echoengine detect``
    (:class:`~echoengine.scoring.WindowScorer`), with PyTorch or with each
    bundle's exported graph.

    Parameters
    ----------
    bundles : sequence of Bundle
        One bundle, or an ensemble sharing classes and front end.
    paths : sequence of paths
        Audio files.
    onnx : bool
        Score with each bundle's ``model.onnx`` (onnxruntime) instead of PyTorch.
    cache : FeatureCache, optional
        Where the images of CNN bundles are read from and stored (PyTorch only).
    batch_size : int, optional
        Windows scored at a time (default: the scorer's, about a minute of audio for a graph).
    block_seconds : float
        Audio decoded at a time.
    log : callable
        Given one line per file that cannot be decoded; its row is NaN.

    Examples
    --------
    >>> predict_files([load_bundle("bundle")], ["dawn_chorus.flac", "pond.wav"]).shape  # doctest: +SKIP
    (2, 4)
    """
    scorer = WindowScorer(bundles, onnx=onnx)
    probabilities = np.full((len(paths), len(scorer.classes)), np.nan)
    for i, path in enumerate(tqdm(paths, desc="predicting", unit="file", leave=False, disable=not progress,
                                  file=sys.stderr)):
        try:
            windows = stream_window_probabilities(scorer, path, batch_size=batch_size, block_seconds=block_seconds,
                                                  cache=cache)
        except AudioError as error:
            log(f"error: {error}")
            continue
        probabilities[i] = pool_windows(windows, multilabel=scorer.config.model.multilabel)
    return probabilities
