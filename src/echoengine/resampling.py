"""resampy's Kaiser filters (librosa's ``res_type="kaiser_fast"``), over any range of a signal and block by block.

BirdNET-Analyzer and birdnetlib read audio with ``librosa.load(...,
res_type="kaiser_fast")``: resampy's band-limited interpolation, whose
filter rolls off from 0.85 of the Nyquist frequency. resampy resamples a
whole array only; here its own kernel (``resampy.interpn.resample_f_s``,
with ``resampy.filters``' tables) computes chosen output samples from a
stretch of the input, so a time range, or a long file block by block, gives
**the same bits** as resampling the whole file: output sample ``j`` sits at
input position ``j * (sr / target_sr)`` (float64, as resampy computes it),
and moving it by a whole number of input frames is exact in float64, so the
kernel finds the same input frame, the same filter phase and the same taps.
The output holds ``ceil(frames * target_sr / sr)`` samples, as librosa's
(resampy's ``int(...)`` of them, then zeros to that length; see
:func:`output_length`).

``resampy`` (with numba) comes with the ``birdnet`` extra: only these
filters need it.

Examples
--------
>>> import numpy as np
>>> x = np.random.default_rng(0).standard_normal(32000).astype("float32")
>>> whole = kaiser(x, 32000, 48000)
>>> whole.shape, whole.dtype
((48000,), dtype('float32'))
>>> part = kaiser(x[9000:20000], 32000, 48000, "kaiser_fast", start=15000, stop=27000, offset=9000)
>>> bool((part == whole[15000:27000]).all())
True
"""

from __future__ import annotations

import functools

import numpy as np

from echoengine.errors import EchoError

__all__ = ["KAISER_FILTERS", "KaiserStream", "kaiser", "output_length", "reach"]

#: resampy's filters, by librosa's ``res_type`` names (BirdNET-Analyzer's is ``kaiser_fast``).
KAISER_FILTERS = ("kaiser_fast", "kaiser_best")


@functools.lru_cache(maxsize=16)
def _filter(name: str, sr: int, target_sr: int) -> tuple[np.ndarray, np.ndarray, int, float]:
    """The interpolation table, its differences, its samples per zero crossing and the scale, as resampy sets them."""
    try:
        from resampy.filters import get_filter
    except ModuleNotFoundError:
        raise EchoError(f"audio.resample_quality {name!r} is resampy's filter, which is not installed: "
                        "pip install 'echoengine[birdnet]' (or resampy)") from None
    window, num_table, _ = get_filter(name)
    ratio = float(target_sr) / sr
    if ratio < 1:
        window = ratio * window
    return window, np.diff(window, append=window[-1]), num_table, min(1.0, ratio)


def reach(name: str, sr: int, target_sr: int) -> int:
    """Input frames on each side of its position that an output sample reads (and one more).

    >>> reach("kaiser_fast", 32000, 48000), reach("kaiser_fast", 96000, 48000)
    (25, 49)
    """
    window, _, num_table, scale = _filter(name, sr, target_sr)
    return len(window) // int(scale * num_table) + 1


def output_length(frames: int, sr: int, target_sr: int) -> int:
    """Samples of a whole signal of ``frames`` resampled: ``ceil(frames * target_sr / sr)``, in integers.

    librosa computes it in floats, whose rounding adds a trailing zero sample
    now and then (48001 for a second at 44.1 kHz); echoengine's ranges count
    in integers, whatever the resampler.

    >>> output_length(44100, 44100, 48000), output_length(1, 44100, 48000)
    (48000, 2)
    """
    return -(-frames * target_sr // sr)


def kaiser(x: np.ndarray, sr: int, target_sr: int, name: str = "kaiser_fast", *, start: int = 0,
           stop: int | None = None, offset: int = 0, total: int | None = None) -> np.ndarray:
    """Output samples ``[start, stop)`` of a signal resampled by resampy, from the input frames around them.

    Parameters
    ----------
    x : np.ndarray, shape (frames,), float32
        Input frames ``[offset, offset + len(x))`` of the signal.
    name : str
        One of :data:`KAISER_FILTERS`.
    start, stop : int
        The output samples wanted (the signal's output numbering; ``stop``
        None: as many as ``x`` gives). Each reads :func:`reach` input frames
        either side of it, which ``x`` must hold unless the signal begins or
        ends there: a sample whose reach leaves ``x`` is computed as if the
        signal ended there (as at its true edges).
    total : int, optional
        The signal's length in frames; ``offset + len(x)`` when omitted.
        The output samples past resampy's ``int(total * target_sr / sr)``
        are zeros (librosa's padding).

    Returns
    -------
    np.ndarray, shape (stop - start,), float32
    """
    from resampy.interpn import resample_f_s  # numba: compiled on first use

    x = np.ascontiguousarray(x, dtype=np.float32)
    total = offset + len(x) if total is None else total
    if stop is None:
        stop = output_length(total, sr, target_sr)
    window, delta, num_table, scale = _filter(name, sr, target_sr)
    step = 1.0 / (float(target_sr) / sr)
    t_out = np.arange(start, stop) * step - offset  # exact: offset is a whole number of frames
    y = np.zeros(len(t_out), dtype=np.float32)
    if len(t_out) and len(x):
        resample_f_s(x, t_out, window, delta, num_table, scale, y)
    resampy_length = int(total * float(target_sr) / float(sr))
    y[max(0, resampy_length - start):] = 0.0
    return y


class KaiserStream:
    """Resample a signal given block by block: the blocks' outputs, joined, equal :func:`kaiser` of the whole.

    Each block's output is the samples whose :func:`reach` it completes; the
    last (``last=True``) gives the rest. Memory holds a block and two reaches.

    Examples
    --------
    >>> x = np.random.default_rng(1).standard_normal(10000).astype("float32")
    >>> stream = KaiserStream(32000, 48000)
    >>> parts = [stream.push(x[:3000]), stream.push(x[3000:7000]), stream.push(x[7000:], last=True)]
    >>> bool((np.concatenate(parts) == kaiser(x, 32000, 48000)).all())
    True
    """

    def __init__(self, sr: int, target_sr: int, name: str = "kaiser_fast") -> None:
        self.sr, self.target_sr, self.name = sr, target_sr, name
        self._reach = reach(name, sr, target_sr)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._offset = 0  # the signal's frame at the buffer's start
        self._next = 0  # the next output sample

    def push(self, block: np.ndarray, *, last: bool = False) -> np.ndarray:
        """The output samples this block completes (with ``last``: all that are left)."""
        self._buffer = np.concatenate([self._buffer, np.asarray(block, dtype=np.float32)])
        end = self._offset + len(self._buffer)
        if last:
            stop = output_length(end, self.sr, self.target_sr)
        else:  # samples at positions below end - reach read only frames the buffer holds
            stop = max(self._next, (end - self._reach - 1) * self.target_sr // self.sr)
        y = kaiser(self._buffer, self.sr, self.target_sr, self.name, start=self._next, stop=stop,
                   offset=self._offset, total=end if last else None)
        self._next = stop
        keep_from = max(self._offset, stop * self.sr // self.target_sr - self._reach - 1)
        self._buffer = self._buffer[keep_from - self._offset:]
        self._offset = keep_from
        return y

