"""Decode audio files to float32 mono at the configured sample rate.

soundfile (libsndfile) decodes ``.wav .flac .ogg .mp3``; soxr resamples with
the same quality as ``librosa.load`` (``"HQ"``). Every failure raises
:class:`~echoengine.errors.AudioError` with the file and the reason, so a
caller can report it in one line and go on with the next file.

Examples
--------
>>> import numpy as np, soundfile as sf, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
>>> sf.write(path, np.zeros((44100, 2), dtype="float32"), 44100)
>>> y = load(path)
>>> y.dtype, y.shape
(dtype('float32'), (48000,))
>>> load(path, offset=0.25, duration=0.5).shape
(24000,)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from echoengine.config import AUDIO_EXTENSIONS, AudioConfig
from echoengine.errors import AudioError

__all__ = ["AudioInfo", "check", "info", "load", "mix_to_mono", "resample", "stream"]

# Frames of context read on each side of a time range, so that the resampling
# filter sees real samples at the range edges rather than an abrupt cut.
_RESAMPLE_CONTEXT_FRAMES = 2048
# Frames decoded at a time when a whole file is checked.
_CHECK_BLOCK_FRAMES = 1 << 20


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about it."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def _open(path: str | Path) -> sf.SoundFile:
    """Open a file for reading, turning every failure into an AudioError."""
    path = Path(path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioError(
            path, f"unsupported format {path.suffix or '(no extension)'!r} (supported: {', '.join(AUDIO_EXTENSIONS)})"
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except OSError as exc:
        raise AudioError(path, f"cannot read file ({exc.strerror})") from None
    if path.is_dir():
        raise AudioError(path, "is a folder, not an audio file")
    if size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        detail = str(exc).split(":", 1)[-1].strip().rstrip(".") or type(exc).__name__
        if "does not exist" in detail:  # libsndfile's words for data its decoder cannot parse
            detail = f"no decodable {path.suffix.lower().lstrip('.')} data"
        raise AudioError(path, f"not a readable audio file ({detail})") from None


def info(path: str | Path) -> AudioInfo:
    """Read a file's header without decoding its samples.

    Raises
    ------
    AudioError
        Missing, empty, unsupported or undecodable file, or one with no samples.
    """
    with _open(path) as f:
        result = AudioInfo(str(path), f.samplerate, f.channels, f.frames, f.format, f.subtype)
    if result.frames <= 0:
        raise AudioError(path, "zero-length audio (the header lists no samples)")
    return result


def mix_to_mono(y: np.ndarray, *, channel: str | int = "mean") -> np.ndarray:
    """Mix a ``(frames, channels)`` array to one channel.

    Parameters
    ----------
    y : np.ndarray, shape (frames,) or (frames, channels)
    channel : "mean" or int
        Average the channels, or keep the one with this 0-based index.

    Examples
    --------
    >>> mix_to_mono(np.array([[0.0, 1.0], [1.0, 1.0]], dtype="float32"))
    array([0.5, 1. ], dtype=float32)
    >>> mix_to_mono(np.array([[0.0, 1.0], [1.0, 1.0]], dtype="float32"), channel=1)
    array([1., 1.], dtype=float32)
    """
    if y.ndim == 1:
        if channel not in ("mean", 0):
            raise ValueError(f"audio has 1 channel; channel index {channel} does not exist")
        return y
    if channel == "mean":
        return y.mean(axis=1, dtype=np.float32)
    if not 0 <= channel < y.shape[1]:
        raise ValueError(f"audio has {y.shape[1]} channel(s); channel index {channel} does not exist")
    return np.ascontiguousarray(y[:, channel])


def resample(y: np.ndarray, *, orig_sr: int, target_sr: int, quality: str = "HQ") -> np.ndarray:
    """Resample a mono signal with soxr (``"HQ"`` is librosa's default quality).

    Examples
    --------
    >>> resample(np.zeros(44100, dtype="float32"), orig_sr=44100, target_sr=48000).shape
    (48000,)
    """
    if orig_sr == target_sr:
        return y
    return soxr.resample(y, orig_sr, target_sr, quality=quality)


def load(
    path: str | Path,
    config: AudioConfig | None = None,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode a file (or a time range of it) to float32 mono at the config's rate.

    Only the requested range is decoded, so a short window of a day-long
    recording is cheap to read.

    Parameters
    ----------
    path : str or Path
        A ``.wav``, ``.flac``, ``.ogg`` or ``.mp3`` file.
    config : AudioConfig, optional
        Target sample rate, channel selection and resampling quality; the
        Echo defaults when omitted.
    offset : float
        Start of the range in seconds.
    duration : float, optional
        Length of the range in seconds; to the end of the file when omitted.
        A range running past the end returns the samples that exist.

    Returns
    -------
    np.ndarray, shape (samples,), float32

    Raises
    ------
    AudioError
        The file is missing, empty, not audio, in an unsupported format,
        truncated, has no samples, has non-finite samples, or lacks the
        requested channel.
    """
    config = config or AudioConfig()
    if offset < 0 or (duration is not None and duration < 0):
        raise AudioError(path, f"invalid time range: offset={offset}, duration={duration}")
    with _open(path) as f:
        sr, total = f.samplerate, f.frames
        if total <= 0:
            raise AudioError(path, "zero-length audio (the header lists no samples)")
        first, count, read_start, read_stop = _plan_range(sr, config.sample_rate, total, offset, duration)
        y = _read_frames(f, path, read_start, read_stop)
    y = _to_mono(y, path, config.channel)
    if not math.isfinite(float(y.sum(dtype=np.float64))):
        raise AudioError(path, "contains non-finite samples (NaN or inf)")
    y = resample(y, orig_sr=sr, target_sr=config.sample_rate, quality=config.resample_quality)
    if first or count is not None:
        y = y[first : None if count is None else first + count]
    return np.ascontiguousarray(y, dtype=np.float32)


def _plan_range(
    sr: int, target_sr: int, total: int, offset: float, duration: float | None
) -> tuple[int, int | None, int, int]:
    """Which input frames to decode for an output range, and where it sits in their resampled output.

    Returns ``(first, count, read_start, read_stop)``: decode input frames
    ``[read_start, read_stop)``, resample, and keep ``count`` output samples
    from ``first`` (``count`` None: to the end). Reading starts on an input
    frame that falls exactly on an output sample, with some context before
    and after, so a range equals the same range of the whole file resampled.
    """
    if sr == target_sr:
        start = min(round(offset * sr), total)
        stop = total if duration is None else min(start + round(duration * sr), total)
        return 0, None, start, stop
    out_total = math.ceil(total * target_sr / sr)
    out_start = min(round(offset * target_sr), out_total)
    out_stop = out_total if duration is None else min(out_start + round(duration * target_sr), out_total)
    if out_start == 0 and out_stop == out_total:
        return 0, None, 0, total
    step = sr // math.gcd(sr, target_sr)  # input frames per exact output-aligned position
    wanted_start = out_start * sr / target_sr - _RESAMPLE_CONTEXT_FRAMES
    read_start = max(int(wanted_start // step) * step, 0)
    read_stop = min(math.ceil(out_stop * sr / target_sr) + _RESAMPLE_CONTEXT_FRAMES, total)
    first = out_start - read_start * target_sr // sr
    return first, out_stop - out_start, read_start, read_stop


def _read_frames(f: sf.SoundFile, path: str | Path, start: int, stop: int) -> np.ndarray:
    """Read frames ``[start, stop)`` as float32, detecting truncated files."""
    try:
        if start:
            f.seek(start)
        y = f.read(stop - start, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        detail = str(exc).removeprefix("Error : ").rstrip(".")
        raise AudioError(path, f"corrupt or truncated audio data ({detail})") from None
    if len(y) < stop - start:
        raise AudioError(
            path, f"truncated: the header lists {f.frames} frames but decoding stopped at frame {start + len(y)}"
        )
    return y


def _to_mono(y: np.ndarray, path: str | Path, channel: str | int) -> np.ndarray:
    try:
        return mix_to_mono(y, channel=channel)
    except ValueError as exc:
        raise AudioError(path, str(exc)) from None


def stream(path: str | Path, config: AudioConfig | None = None, *, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """Decode a file block by block: float32 mono at the config's rate, memory bounded whatever its length.

    soxr resamples the blocks as one stream, so the concatenated blocks equal
    :func:`load` of the whole file within resampling rounding.

    Parameters
    ----------
    block_seconds : float
        Input audio decoded at a time.

    Yields
    ------
    np.ndarray, shape (samples,), float32

    Raises
    ------
    AudioError
        As :func:`load`, when the file is opened or when a bad block is met.

    Examples
    --------
    >>> import soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
    >>> sf.write(path, np.zeros(44100 * 3, dtype="float32"), 44100)
    >>> sum(len(b) for b in stream(path, block_seconds=1.0))
    144000
    """
    config = config or AudioConfig()
    f = _open(path)
    with f:
        sr, total = f.samplerate, f.frames
        if total <= 0:
            raise AudioError(path, "zero-length audio (the header lists no samples)")
        resampler = None if sr == config.sample_rate else soxr.ResampleStream(
            sr, config.sample_rate, 1, dtype="float32", quality=config.resample_quality)
        step = max(1, round(block_seconds * sr))
        for start in range(0, total, step):
            stop = min(start + step, total)
            y = _to_mono(_read_frames(f, path, start, stop), path, config.channel)
            if not math.isfinite(float(y.sum(dtype=np.float64))):
                raise AudioError(path, f"contains non-finite samples (NaN or inf) near {start / sr:.1f} s")
            if resampler is not None:
                y = resampler.resample_chunk(y, last=stop == total)
            yield np.ascontiguousarray(y, dtype=np.float32)


def check(path: str | Path, config: AudioConfig | None = None) -> AudioInfo:
    """Decode a whole file block by block and return its header info if it is usable.

    Unlike :func:`info`, this finds problems that only decoding shows
    (truncation, NaN or inf samples), and files too short to use. Memory
    stays bounded whatever the file's length.

    Raises
    ------
    AudioError
        The file cannot be used; the message says why.
    """
    config = config or AudioConfig()
    header = info(path)
    if header.duration < config.min_seconds:
        raise AudioError(
            path,
            f"too short: {header.frames} sample(s) ({header.duration:.4g} s); "
            f"at least audio.min_seconds={config.min_seconds} s is needed",
        )
    if isinstance(config.channel, int) and config.channel >= header.channels:
        raise AudioError(
            path, f"audio has {header.channels} channel(s); channel index {config.channel} does not exist"
        )
    with _open(path) as f:
        for start in range(0, header.frames, _CHECK_BLOCK_FRAMES):
            block = _read_frames(f, path, start, min(start + _CHECK_BLOCK_FRAMES, header.frames))
            if not math.isfinite(float(block.sum(dtype=np.float64))):
                raise AudioError(path, "contains non-finite samples (NaN or inf)")
    return header


def is_audio_file(path: str | os.PathLike, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> bool:
    """Whether a path has an audio extension and is not a hidden file."""
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions
