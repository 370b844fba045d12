"""Cut signals into fixed-length clips: random crops for training, windows for evaluation.

All functions are pure: arrays in, arrays out, randomness only from the
``numpy.random.Generator`` passed in.

Examples
--------
>>> import numpy as np
>>> y = np.arange(10, dtype="float32")
>>> random_crop(y, length=4, rng=np.random.default_rng(0)).shape
(4,)
>>> pad_to_length(y[:3], length=5)
array([0., 1., 2., 0., 0.], dtype=float32)
>>> window_starts(10, length=4, hop=3)
array([0, 3, 6])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

__all__ = [
    "box_labels",
    "crop_around",
    "crop_at",
    "fixed_windows",
    "pad_to_length",
    "random_crop",
    "random_start",
    "window_starts",
]


def pad_to_length(
    y: np.ndarray, *, length: int, where: str = "end", rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pad a signal with silence to ``length`` samples (no-op when long enough).

    Parameters
    ----------
    y : np.ndarray, shape (samples,)
    length : int
    where : {"end", "center", "random"}
        Where the silence goes: after the signal (the Echo pipeline), split
        evenly on both sides, or a random split drawn from ``rng``.
    rng : numpy.random.Generator, optional
        Needed for ``where="random"``.
    """
    missing = length - len(y)
    if missing <= 0:
        return y
    if where == "end":
        before = 0
    elif where == "center":
        before = missing // 2
    elif where == "random":
        if rng is None:
            raise ValueError("where='random' needs an rng")
        before = int(rng.integers(0, missing + 1))
    else:
        raise ValueError(f"where must be 'end', 'center' or 'random', got {where!r}")
    return np.pad(y, (before, missing - before))


def crop_at(y: np.ndarray, *, start: int, length: int) -> np.ndarray:
    """The ``length`` samples from ``start``, padded with silence past the end."""
    return pad_to_length(y[start : start + length], length=length)


def random_start(n_samples: int, *, length: int, rng: np.random.Generator) -> int:
    """A uniformly drawn start for a ``length``-sample crop of ``n_samples`` (0 when shorter).

    Examples
    --------
    >>> random_start(3, length=5, rng=np.random.default_rng(0))
    0
    """
    return int(rng.integers(0, n_samples - length + 1)) if n_samples > length else 0


def random_crop(
    y: np.ndarray, *, length: int, rng: np.random.Generator, pad: str = "end"
) -> np.ndarray:
    """A random subsection of ``length`` samples (the Echo pipeline's training clip).

    A longer signal is cut at a uniformly drawn start; a shorter one is
    padded with silence (``pad`` says where).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> y = np.arange(100, dtype="float32")
    >>> clip = random_crop(y, length=10, rng=rng)
    >>> bool(np.all(np.diff(clip) == 1))
    True
    """
    if len(y) <= length:
        return pad_to_length(y, length=length, where=pad, rng=rng)
    start = random_start(len(y), length=length, rng=rng)
    return y[start : start + length]


def window_starts(n_samples: int, *, length: int, hop: int, keep_partial: bool = True) -> np.ndarray:
    """Start samples of windows of ``length`` every ``hop`` samples covering a signal.

    The windows cover every sample: when the last full window ends before
    the signal does, one more window (partial, to be padded) starts at the
    next hop, unless ``keep_partial`` is False. A signal shorter than one
    window gives a single window at 0.

    Examples
    --------
    >>> window_starts(10, length=4, hop=4)
    array([0, 4, 8])
    >>> window_starts(10, length=4, hop=4, keep_partial=False)
    array([0, 4])
    >>> window_starts(3, length=4, hop=2)
    array([0])
    """
    if length <= 0 or not 0 < hop <= length:
        raise ValueError(f"need 0 < hop <= length so that windows cover the signal, got length={length}, hop={hop}")
    if n_samples <= length:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - length + 1, hop, dtype=np.int64)
    if keep_partial and starts[-1] + length < n_samples:
        starts = np.append(starts, starts[-1] + hop)
    return starts


def fixed_windows(
    y: np.ndarray, *, length: int, hop: int, keep_partial: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a signal into windows for evaluation or detection.

    Returns
    -------
    windows : np.ndarray, shape (n_windows, length)
        The last one padded with silence when partial.
    starts : np.ndarray, shape (n_windows,)
        Start sample of each window.

    Examples
    --------
    >>> w, s = fixed_windows(np.ones(10, dtype="float32"), length=4, hop=4)
    >>> w.shape, s.tolist(), w[-1].tolist()
    ((3, 4), [0, 4, 8], [1.0, 1.0, 0.0, 0.0])
    """
    starts = window_starts(len(y), length=length, hop=hop, keep_partial=keep_partial)
    windows = np.stack([crop_at(y, start=int(s), length=length) for s in starts])
    return windows, starts


def crop_around(start: float, end: float, *, length: float, duration: float, jitter: float,
                rng: np.random.Generator) -> float:
    """The start (seconds) of a ``length``-second crop holding an annotated box, drawn at random.

    The crop holds the whole box when it fits, else a random part of it; ``jitter``
    (0 to 1) is how far the box may move from the crop's centre toward its
    edges (0: centred; 1: anywhere it still fits). The crop stays inside the
    recording when the recording is long enough.

    Examples
    --------
    >>> crop_around(10.0, 11.0, length=5.0, duration=60.0, jitter=0.0, rng=np.random.default_rng(0))
    8.0
    >>> 6.0 <= crop_around(10.0, 11.0, length=5.0, duration=60.0, jitter=1.0, rng=np.random.default_rng(0)) <= 10.0
    True
    """
    if end - start >= length:  # a long box: a random window inside it
        low, high = start, end - length
    else:
        centre = (start + end - length) / 2
        slack = (length - (end - start)) / 2 * jitter
        low, high = centre - slack, centre + slack
    low, high = max(low, 0.0), max(min(high, duration - length), 0.0)
    return float(rng.uniform(low, high)) if high > low else max(min(low, max(duration - length, 0.0)), 0.0)


def _windows_holding(boxes, starts: np.ndarray, *, length: float, min_overlap: float, min_fraction: float,
                     band: tuple[float, float] | None) -> np.ndarray:
    """(windows, boxes): whether each window holds each box, as :func:`box_labels` defines it."""
    begin, finish = boxes["start"].to_numpy(float), boxes["end"].to_numpy(float)
    overlap = np.minimum(starts[:, None] + length, finish[None, :]) - np.maximum(starts[:, None], begin[None, :])
    held = (overlap >= min_overlap) | (overlap >= min_fraction * (finish - begin)[None, :] - 1e-9)
    point = (finish == begin)[None, :]  # a point label (Audacity): held by the window it falls in
    held &= (overlap > 0) | (point & (begin[None, :] >= starts[:, None]) & (begin[None, :] < starts[:, None] + length))
    if band is not None:
        low, high = boxes["low_freq"].to_numpy(float), boxes["high_freq"].to_numpy(float)
        visible = np.isnan(low) | np.isnan(high) | ((low < band[1]) & (high > band[0]))
        held &= visible[None, :]
    return held


def box_labels(
    boxes,
    starts: np.ndarray,
    *,
    length: float,
    classes: list[str],
    min_overlap: float = 0.5,
    min_fraction: float = 0.5,
    band: tuple[float, float] | None = None,
    unlabeled: str = "negative",
) -> np.ndarray:
    """Multi-hot labels of windows from the annotated boxes of their recording.

    A window holds a box when they overlap by at least ``min_overlap``
    seconds or by ``min_fraction`` of the box (so short calls count whole),
    and, with ``band`` (the model's ``(fmin, fmax)``), when the box's
    frequencies overlap the band. A positive box makes its class 1; a
    negative box (``positive`` False: a verified absence) makes it 0; any
    other class is 0 (``unlabeled="negative"``) or NaN, left out of the loss
    (``"ignore"``). A positive wins over a negative.

    Parameters
    ----------
    boxes : DataFrame
        ``start, end, low_freq, high_freq, label, positive`` of one recording.
    starts : ndarray
        Window starts in seconds.

    Returns
    -------
    ndarray, shape (n_windows, n_classes), float32 with 1, 0 and NaN

    Examples
    --------
    >>> import pandas as pd
    >>> boxes = pd.DataFrame({"start": [1.0, 6.0], "end": [2.0, 9.0], "low_freq": 0.0, "high_freq": 0.0,
    ...                       "label": ["owl", "frog"], "positive": [True, False]})
    >>> box_labels(boxes, np.array([0.0, 5.0]), length=5.0, classes=["owl", "frog"], unlabeled="ignore")
    array([[ 1., nan],
           [nan,  0.]], dtype=float32)
    """
    fill = 0.0 if unlabeled == "negative" else np.nan
    if unlabeled not in ("negative", "ignore"):
        raise ValueError(f"unlabeled must be 'negative' or 'ignore', got {unlabeled!r}")
    labels = np.full((len(starts), len(classes)), fill, dtype=np.float32)
    if len(boxes) == 0 or len(starts) == 0:
        return labels
    index = {c: i for i, c in enumerate(classes)}
    boxes = boxes[boxes["label"].isin(index).to_numpy()]
    held = _windows_holding(boxes, starts, length=length, min_overlap=min_overlap, min_fraction=min_fraction,
                            band=band)
    columns = np.array([index[c] for c in boxes["label"]], dtype=np.int64)
    positive = boxes["positive"].to_numpy(bool)
    for sign in (False, True):  # negatives first, so that a positive wins
        rows, which = np.nonzero(held & (positive == sign)[None, :])
        labels[rows, columns[which]] = 1.0 if sign else 0.0
    return labels


def stream_windows(blocks: Iterable[np.ndarray], *, length: int, hop: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """Windows of a signal given block by block: ``(start sample, window, samples of audio in it)``.

    The windows are those of :func:`echoengine.clips.window_starts` on the
    whole signal: every ``hop`` samples while a full window fits, then one
    partial window padded with silence when samples remain (a signal shorter
    than a window gives one padded window). Only a window and a block are
    held in memory.
    """
    if length <= 0 or not 0 < hop <= length:
        raise ValueError(f"need 0 < hop <= length, got length={length}, hop={hop}")
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # sample index of buffer[0]
    start = 0  # next window start
    for block in blocks:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        while start + length <= offset + len(buffer):
            a = start - offset
            yield start, buffer[a : a + length].copy(), length
            start += hop
        drop = start - offset
        if drop > 0:
            buffer, offset = buffer[drop:], start
    total = offset + len(buffer)
    if total == 0:
        return
    if start < total and (start == 0 or start - hop + length < total):
        tail = buffer[start - offset :]
        window = np.zeros(length, dtype=np.float32)
        window[: len(tail)] = tail
        yield start, window, len(tail)
