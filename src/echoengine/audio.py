"""Decode audio files to float32 mono at the configured sample rate.

soundfile (libsndfile) decodes the formats whose header gives the exact
length (``.wav .flac .ogg .oga .aif .aiff``: PCM sizes, FLAC's STREAMINFO, Ogg
granule positions); PyAV (FFmpeg, :mod:`echoengine.decode`) decodes the
compressed ones (``.mp3 .m4a .aac .opus .wma``) to the end of their stream,
since their header's length is an estimate. soxr resamples with the same
quality as ``librosa.load`` (``"HQ"``), or resampy's Kaiser filters
(``audio.resample_quality = "kaiser_fast"``: BirdNET-Analyzer's, see
:mod:`echoengine.resampling`); channels are averaged in float32, as
``librosa.load(mono=True)`` does. Every failure raises
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

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from echoengine import decode, resampling
from echoengine.config import AUDIO_EXTENSIONS, AudioConfig
from echoengine.errors import AudioError

__all__ = ["AudioInfo", "check", "info", "load", "mix_to_mono", "resample", "stream"]

# Frames of context read on each side of a time range, so that the resampling
# filter sees real samples at the range edges rather than an abrupt cut.
_RESAMPLE_CONTEXT_FRAMES = 2048
# Frames decoded at a time when a whole file is checked.
_CHECK_BLOCK_FRAMES = 1 << 20
# Read by soundfile, whose length from their header is exact; the other AUDIO_EXTENSIONS are decoded by PyAV.
_SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about it (from :func:`check`: its decoded length)."""

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


def _compressed(path: str | Path) -> bool:
    """Whether a file is decoded by PyAV (its header's length an estimate) rather than soundfile."""
    return Path(path).suffix.lower() not in _SOUNDFILE_EXTENSIONS


def _validate(path: str | Path) -> Path:
    """A path to an existing, non-empty file of a supported format, or an AudioError."""
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
    return path


def _open(path: str | Path) -> sf.SoundFile:
    """Open a file with soundfile, turning every failure into an AudioError."""
    path = _validate(path)
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        detail = str(exc).split(":", 1)[-1].strip().rstrip(".") or type(exc).__name__
        if "does not exist" in detail:  # libsndfile's words for data its decoder cannot parse
            detail = f"no decodable {path.suffix.lower().lstrip('.')} data"
        raise AudioError(path, f"not a readable audio file ({detail})") from None


def _probe(path: str | Path) -> AudioInfo:
    """A compressed file's header, its length the header's estimate (0: none)."""
    header = decode.probe(_validate(path))
    return AudioInfo(str(path), header.sample_rate, header.channels, header.frames, header.format, header.subtype)


def info(path: str | Path) -> AudioInfo:
    """Read a file's header without decoding its samples.

    For compressed formats (MP3, AAC, Opus, WMA) the length is the header's
    estimate (decoded when the header has none); :func:`check` gives the
    decoded length.

    Raises
    ------
    AudioError
        Missing, empty, unsupported or undecodable file, or one with no samples.

    Examples
    --------
    >>> import soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.flac")
    >>> sf.write(path, np.zeros(8000, dtype="float32"), 16000)
    >>> info(path).duration
    0.5
    """
    if _compressed(path):
        result = _probe(path)
        return result if result.frames > 0 else dataclasses.replace(result, frames=_decode_all(path))
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
    """Resample a mono signal with soxr (``"HQ"`` is librosa's default quality) or resampy (``"kaiser_fast"``).

    Examples
    --------
    >>> resample(np.zeros(44100, dtype="float32"), orig_sr=44100, target_sr=48000).shape
    (48000,)
    """
    if orig_sr == target_sr:
        return y
    if quality in resampling.KAISER_FILTERS:
        return resampling.kaiser(y, orig_sr, target_sr, quality)
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
        A file with one of :data:`~echoengine.config.AUDIO_EXTENSIONS`.
    config : AudioConfig, optional
        Target sample rate, channel selection and resampling quality; the
        Echo defaults when omitted.
    offset : float
        Start of the range in seconds.
    duration : float, optional
        Length of the range in seconds; to the end of the file when omitted.
        A range running past the end returns the samples that exist. Of a
        compressed file, a range holds the same samples as that range of the
        whole decoded file.

    Returns
    -------
    np.ndarray, shape (samples,), float32

    Raises
    ------
    AudioError
        The file is missing, empty, not audio, in an unsupported format,
        truncated (WAV, FLAC, Ogg; a compressed file is decoded as far as it
        goes, with a warning when that is far short of its header's length),
        has no samples, has non-finite samples, or lacks the requested channel.
    """
    config = config or AudioConfig()
    if offset < 0 or (duration is not None and duration < 0):
        raise AudioError(path, f"invalid time range: offset={offset}, duration={duration}")
    if _compressed(path):
        sr = _probe(path).sample_rate
        first, count, read_start, read_stop = _plan_range(sr, config.sample_rate, None, offset, duration,
                                                          _context(sr, config))
        y = decode.read(path, read_start, read_stop)
    else:
        with _open(path) as f:
            sr, total = f.samplerate, f.frames
            if total <= 0:
                raise AudioError(path, "zero-length audio (the header lists no samples)")
            first, count, read_start, read_stop = _plan_range(sr, config.sample_rate, total, offset, duration,
                                                              _context(sr, config))
            y = _read_frames(f, path, read_start, total if read_stop is None else read_stop)
    y = _to_mono(y, path, config.channel)
    if not math.isfinite(float(y.sum(dtype=np.float64))):
        raise AudioError(path, "contains non-finite samples (NaN or inf)")
    return _resample_range(y, sr, config, first, count, read_start)


def _resample_range(y: np.ndarray, sr: int, config: AudioConfig, first: int, count: int | None,
                    read_start: int) -> np.ndarray:
    """Frames read from ``read_start`` resampled, the planned output range kept (:func:`_plan_range`)."""
    if config.resample_quality in resampling.KAISER_FILTERS and sr != config.sample_rate:
        return _kaiser_range(y, sr, config, first, count, read_start)
    y = resample(y, orig_sr=sr, target_sr=config.sample_rate, quality=config.resample_quality)
    if first or count is not None:
        y = y[first : None if count is None else first + count]
    return np.ascontiguousarray(y, dtype=np.float32)


def _context(sr: int, config: AudioConfig) -> int:
    """Input frames read on each side of a time range: what the resampling filter reaches, at least 2048."""
    if config.resample_quality not in resampling.KAISER_FILTERS or sr == config.sample_rate:
        return _RESAMPLE_CONTEXT_FRAMES
    return max(_RESAMPLE_CONTEXT_FRAMES, resampling.reach(config.resample_quality, sr, config.sample_rate))


def _kaiser_range(y: np.ndarray, sr: int, config: AudioConfig, first: int, count: int | None,
                  read_start: int) -> np.ndarray:
    """The planned output range of frames read from ``read_start``, resampled by resampy: the whole file's samples."""
    target_sr = config.sample_rate
    start = read_start * target_sr // sr + first  # read_start falls on an output sample
    stop = resampling.output_length(read_start + len(y), sr, target_sr)  # all there is, if the read reached the end
    if count is not None:
        stop = min(stop, start + count)
    return resampling.kaiser(y, sr, target_sr, config.resample_quality, start=start, stop=max(start, stop),
                             offset=read_start)


def _plan_range(
    sr: int, target_sr: int, total: int | None, offset: float, duration: float | None,
    context: int = _RESAMPLE_CONTEXT_FRAMES,
) -> tuple[int, int | None, int, int | None]:
    """Which input frames to decode for an output range, and where it sits in their resampled output.

    Returns ``(first, count, read_start, read_stop)``: decode input frames
    ``[read_start, read_stop)`` (``read_stop`` None: to the end), resample,
    and keep ``count`` output samples from ``first`` (``count`` None: to the
    end). Reading starts on an input frame that falls exactly on an output
    sample, with some context before and after, so a range equals the same
    range of the whole file resampled. ``total`` None: the length is unknown
    until decoded, and a range past the end keeps what exists. ``context``:
    input frames read on each side.

    Examples
    --------
    >>> _plan_range(32000, 48000, None, 10.0, 1.0)
    (3072, 48000, 317952, 354048)
    """
    end = math.inf if total is None else total
    if sr == target_sr:
        start = round(min(offset * sr, end))
        stop = None if duration is None else round(min(start + round(duration * sr), end))
        return 0, None, start, stop
    out_end = math.inf if total is None else math.ceil(total * target_sr / sr)
    out_start = round(min(offset * target_sr, out_end))
    out_stop = None if duration is None else min(out_start + round(duration * target_sr), out_end)
    if out_start == 0 and out_stop in (None, out_end):
        return 0, None, 0, total
    step = sr // math.gcd(sr, target_sr)  # input frames per exact output-aligned position
    wanted_start = out_start * sr / target_sr - context
    read_start = max(int(wanted_start // step) * step, 0)
    read_stop = None if out_stop is None else min(math.ceil(out_stop * sr / target_sr) + context, end)
    first = out_start - read_start * target_sr // sr
    return first, None if out_stop is None else round(out_stop - out_start), read_start, read_stop


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
    :func:`load` of the whole file within resampling rounding; resampy's
    filters (:class:`~echoengine.resampling.KaiserStream`) give it exactly.

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
    sr = (_probe(path) if _compressed(path) else info(path)).sample_rate
    resampler = _stream_resampler(sr, config)
    start = 0
    for block in _blocks(path, max(1, round(block_seconds * sr))):
        y = _to_mono(block, path, config.channel)
        if not math.isfinite(float(y.sum(dtype=np.float64))):
            raise AudioError(path, f"contains non-finite samples (NaN or inf) near {start / sr:.1f} s")
        start += len(y)
        if resampler is not None:
            y = resampler(y, False)
        yield np.ascontiguousarray(y, dtype=np.float32)
    if resampler is not None:
        tail = resampler(np.zeros(0, np.float32), True)
        if len(tail):
            yield np.ascontiguousarray(tail, dtype=np.float32)


def _stream_resampler(sr: int, config: AudioConfig):
    """``(block, last) -> output`` resampling blocks as one signal (soxr's stream or resampy's); None: no resampling."""
    if sr == config.sample_rate:
        return None
    if config.resample_quality in resampling.KAISER_FILTERS:
        kaiser = resampling.KaiserStream(sr, config.sample_rate, config.resample_quality)
        return lambda block, last: kaiser.push(block, last=last)
    sox = soxr.ResampleStream(sr, config.sample_rate, 1, dtype="float32", quality=config.resample_quality)
    return lambda block, last: sox.resample_chunk(block, last=last)


def _blocks(path: str | Path, size: int) -> Iterator[np.ndarray]:
    """A whole file's frames in blocks of ``size`` (the last one shorter), from soundfile or PyAV."""
    if _compressed(path):
        yield from decode.blocks(path, size)
        return
    with _open(path) as f:
        for start in range(0, f.frames, size):
            yield _read_frames(f, path, start, min(start + size, f.frames))


def check(path: str | Path, config: AudioConfig | None = None) -> AudioInfo:
    """Return a file's header info if it is usable, decoding it whole (block by block) where that can tell more.

    Unlike :func:`info`, this finds problems that only decoding shows
    (truncation, NaN or inf samples), and files too short to use. Integer PCM
    in WAV or AIFF is not decoded: its header already counts the frames the
    file holds, and its samples are finite whatever their bytes. Memory
    stays bounded whatever the file's length. Of a compressed file, the
    length returned is the decoded one (a file far shorter than its header
    says is used, with a warning).

    Raises
    ------
    AudioError
        The file cannot be used; the message says why.

    Examples
    --------
    >>> import soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
    >>> sf.write(path, np.zeros(48000, dtype="float32"), 48000)
    >>> check(path).frames
    48000
    """
    config = config or AudioConfig()
    compressed = _compressed(path)  # its header's length is an estimate: the file's length is what decodes
    header = dataclasses.replace(_probe(path), frames=_decode_all(path)) if compressed else info(path)
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
    if not compressed and not _plain_pcm(header):
        _decode_all(path)
    return header


#: Containers whose integer PCM samples are stored as they are: libsndfile counts the frames present, and any bytes
#: decode to finite samples, so their header says all that decoding would.
_PLAIN_CONTAINERS = frozenset({"WAV", "WAVEX", "W64", "RF64", "AIFF"})
_INTEGER_PCM = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32"})


def _plain_pcm(header: AudioInfo) -> bool:
    """Whether a file holds integer PCM in a plain container (nothing for a decode to find)."""
    return header.format in _PLAIN_CONTAINERS and header.subtype in _INTEGER_PCM


def _decode_all(path: str | Path) -> int:
    """Decode a whole file, checking that its samples are finite; how many frames it holds."""
    frames = 0
    for block in _blocks(path, _CHECK_BLOCK_FRAMES):
        if not math.isfinite(float(block.sum(dtype=np.float64))):
            raise AudioError(path, "contains non-finite samples (NaN or inf)")
        frames += len(block)
    return frames


def is_audio_file(path: str | os.PathLike, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> bool:
    """Whether a path has an audio extension and is not a hidden file.

    Examples
    --------
    >>> is_audio_file("frog.M4A"), is_audio_file(".frog.mp3"), is_audio_file("notes.txt")
    (True, False, False)
    """
    name = os.path.basename(path)
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions
