"""Decode compressed audio (MP3, AAC/M4A, Opus, WMA) with PyAV (FFmpeg), reading each stream to its end.

The length a compressed file's header gives is an estimate: an MP3's frame
count leaves out encoder delay and padding, and an MP3 without a Xing, Info or
VBRI frame (or a raw AAC stream) has no count at all, only a guess from the
bitrate of its first frames. So the decoder here decodes what the file holds,
to the end of its stream, and the length of a file is the number of frames
actually decoded. A file is reported (a warning naming it, one line) only when
it stops far short of the length its header states: by more than
:data:`TRUNCATED_SECONDS` *and* more than :data:`TRUNCATED_FRACTION` of that
length, so that neither the frame rounding of a short clip nor the estimate
drift of an hours-long file is mistaken for damage. Even then the decodable
audio is used. Only a file with no decodable audio raises
:class:`~echoengine.errors.AudioError`.

Frames are numbered from the first decoded sample (after the decoder has
dropped the encoder delay it knows of). A range ``[start, stop)`` starting
more than :data:`SEEK_BEYOND_SECONDS` in is read by seeking a little before it
and cutting by timestamps, for codecs whose decoding after a seek matches the
whole decode (MP3, AAC, Opus, in containers whose clock counts whole samples);
other ranges are decoded from the start. AAC's perceptual noise substitution
fills some bands with random noise, so after a seek those bands hold other
noise (by up to ~2e-3 here); every other sample is the same.

Examples
--------
Any file FFmpeg opens works (echoengine reads WAV with soundfile):

>>> import os, tempfile, soundfile as sf
>>> path = os.path.join(tempfile.mkdtemp(), "ramp.wav")
>>> sf.write(path, np.arange(16000, dtype="float32") / 16000, 16000, subtype="FLOAT")
>>> probe(path)
Header(sample_rate=16000, channels=1, frames=16000, format='WAV', subtype='PCM_F32LE', stated=True)
>>> np.round(read(path, 4000, 4003) * 16000)
array([4000., 4001., 4002.], dtype=float32)
>>> sum(len(block) for block in blocks(path, 5000))
16000
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from echoengine.errors import AudioError

__all__ = ["SEEK_BEYOND_SECONDS", "TRUNCATED_FRACTION", "TRUNCATED_SECONDS", "Header", "blocks", "probe", "read"]

logger = logging.getLogger(__name__)

#: A stream is reported as truncated when it stops more than this many seconds short of its header's length ...
TRUNCATED_SECONDS = 1.0
#: ... and more than this fraction of it short.
TRUNCATED_FRACTION = 0.05
#: Ranges that start later than this are read by seeking; earlier ones are decoded from the start (a seek costs
#: about as much as decoding 5 s of MP3: bench/decode.py).
SEEK_BEYOND_SECONDS = 5.0
# Audio decoded before a range after a seek, to refill the decoder's state (MP3's bit reservoir, the MDCT overlap).
_PREROLL_SECONDS = 0.5
# Codecs whose decoded samples after a seek equal those of the whole decode (FFmpeg's canonical names).
_SEEKABLE_CODECS = frozenset({"mp3", "aac", "opus"})
# FFmpeg's sample formats (less the planar "p") as numpy types.
_SAMPLE_TYPES = {"u8": np.uint8, "s16": np.int16, "s32": np.int32, "s64": np.int64, "flt": np.float32,
                 "dbl": np.float64}
# Raw streams whose length FFmpeg estimates from the bitrate (an MP3 too, unless it has a Xing/Info/VBRI frame).
_ESTIMATED_FORMATS = frozenset({"aac", "ac3", "eac3"})


class _UnplacedError(Exception):
    """A frame decoded after a seek has no timestamp to place it by."""


@dataclass(frozen=True)
class Header:
    """What a compressed file's container says about its audio stream.

    ``frames`` is the stated or estimated length (0 when unknown); ``stated``
    says whether the header states it (an MP3's Xing frame count, an MP4's
    sample table, an Ogg stream's last granule) rather than FFmpeg guessing it
    from the bitrate.
    """

    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    stated: bool


def _kind(path: str | Path) -> str:
    return Path(path).suffix.lower().lstrip(".") or "audio"


@contextmanager
def _opened(path: str | Path) -> Iterator[tuple[av.container.InputContainer, av.audio.stream.AudioStream]]:
    """The container and its first audio stream, every failure turned into an AudioError."""
    try:
        # "file:" so that a name such as "http:x.mp3" or "a:b.mp3" is a local file, never a protocol
        container = av.open(f"file:{Path(path).absolute()}", metadata_errors="replace")
    except av.error.InvalidDataError:
        raise AudioError(path, f"not a readable audio file (no decodable {_kind(path)} data)") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise AudioError(path, f"not a readable audio file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if not container.streams.audio:
            raise AudioError(path, "not a readable audio file (no audio stream)")
        yield container, container.streams.audio[0]
    finally:
        container.close()


def _mp3_states_length(path: str | Path) -> bool:
    """Whether an MP3's first frame is a Xing, Info or VBRI frame, the only place an MP3 states its frame count."""
    with open(path, "rb") as file:
        offset, head = 0, file.read(10)
        while len(head) == 10 and head[:3] == b"ID3":  # skip ID3v2 tags: 10-byte header, syncsafe size, footer flag
            size = sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(head[6:10]))
            offset += 10 + size + 10 * bool(head[5] & 0x10)
            file.seek(offset)
            head = file.read(10)
        file.seek(offset)
        data = file.read(1 << 16)
    sync = data.find(b"\xff")  # the first frame: 11 set bits
    while sync != -1 and not (sync + 1 < len(data) and data[sync + 1] & 0xE0 == 0xE0):
        sync = data.find(b"\xff", sync + 1)
    return sync != -1 and any(tag in data[sync : sync + 48] for tag in (b"Xing", b"Info", b"VBRI"))


def _header(path: str | Path, container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> Header:
    codec = stream.codec_context
    if not codec.sample_rate or not codec.channels:
        raise AudioError(path, f"not a readable audio file (no decodable {_kind(path)} data)")
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = container.duration / av.time_base if container.duration else 0.0
    name = container.format.name.split(",")[0]
    stated = seconds > 0 and name not in _ESTIMATED_FORMATS and (name != "mp3" or _mp3_states_length(path))
    return Header(codec.sample_rate, codec.channels, round(seconds * codec.sample_rate), name.upper(),
                  codec.codec.canonical_name.upper(), stated)


def probe(path: str | Path) -> Header:
    """Read a compressed file's header (its length is the header's, possibly an estimate).

    Raises
    ------
    AudioError
        Not a file FFmpeg can open, or one without an audio stream.
    """
    with _opened(path) as (container, stream):
        return _header(path, container, stream)


def _samples(path: str | Path, frame: av.AudioFrame, header: Header) -> np.ndarray:
    """A decoded frame as float32 ``(samples, channels)``."""
    channels = frame.layout.nb_channels
    if channels != header.channels or frame.sample_rate != header.sample_rate:
        raise AudioError(path, f"the stream changes from {header.channels} channel(s) at {header.sample_rate} Hz "
                               f"to {channels} at {frame.sample_rate} Hz mid-file")
    dtype, n = _SAMPLE_TYPES[frame.format.name.rstrip("p")], frame.samples
    if not frame.format.is_planar:
        y = np.frombuffer(frame.planes[0], dtype, n * channels).reshape(n, channels)
    elif channels == 1:  # views of the frame's buffers: faster than to_ndarray, which stacks the planes
        y = np.frombuffer(frame.planes[0], dtype, n)[:, None]
    else:
        y = np.stack([np.frombuffer(plane, dtype, n) for plane in frame.planes], axis=1)
    if y.dtype.kind == "u":
        return (y.astype(np.float32) - 128) / 128
    if y.dtype.kind == "i":
        return y.astype(np.float32) / np.float32(2 ** (8 * y.dtype.itemsize - 1))
    return y.astype(np.float32, copy=False)


def _seek(container: av.container.InputContainer, stream: av.audio.stream.AudioStream, header: Header,
          start: int) -> bool:
    """Seek to a little before frame ``start`` where cutting by timestamps is exact; whether it did."""
    seconds = start / header.sample_rate - _PREROLL_SECONDS
    base = stream.time_base
    if (seconds < SEEK_BEYOND_SECONDS or header.subtype.lower() not in _SEEKABLE_CODECS
            or base is None or base.numerator != 1 or base.denominator % header.sample_rate):
        return False
    container.seek((stream.start_time or 0) + int(seconds / base), stream=stream, backward=True)
    return True


def _chunks(path: str | Path, container: av.container.InputContainer, stream: av.audio.stream.AudioStream,
            header: Header, *, seeked: bool) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, samples)`` of each decoded frame to the end of the stream; undecodable packets are skipped."""
    position, skipped = (None if seeked else 0), 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:  # unreadable data where a damaged file ends: flush the decoder and stop
            packet = None
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError:
            skipped += 1
            continue
        for frame in frames:
            if position is None:
                if frame.pts is None:
                    raise _UnplacedError
                position = round((frame.pts - (stream.start_time or 0)) * stream.time_base * header.sample_rate)
            y = _samples(path, frame, header)
            yield position, y
            position += len(y)
        if packet is None:
            break
    if not seeked:
        _report_end(path, header, position, skipped)


def _report_end(path: str | Path, header: Header, decoded: int, skipped: int) -> None:
    """Raise when nothing decoded; warn when the stream stops far short of the length its header states."""
    if decoded == 0:
        raise AudioError(path, f"not a readable audio file (no decodable {_kind(path)} data)")
    rate, stated = header.sample_rate, header.frames
    short = stated - decoded
    packets = f"; {skipped} undecodable packet(s) skipped" if skipped else ""
    if header.stated and short > max(TRUNCATED_SECONDS * rate, TRUNCATED_FRACTION * stated):
        logger.warning("%s: truncated: the header lists %d frames (%.1f s) but decoding stopped at frame %d (%.1f s); "
                       "using the decodable audio%s", path, stated, stated / rate, decoded, decoded / rate, packets)
    elif skipped:
        logger.info("%s: %d undecodable packet(s) skipped", path, skipped)


def read(path: str | Path, start: int = 0, stop: int | None = None, *, seek: bool = True) -> np.ndarray:
    """Decode frames ``[start, stop)`` (to the end when ``stop`` is None) of a compressed file.

    Returns what exists of the range: float32, shape ``(frames,)`` for mono or
    ``(frames, channels)``. Reading to the end warns about a truncated file.

    Raises
    ------
    AudioError
        The file cannot be opened, or holds no decodable audio.
    """
    with _opened(path) as (container, stream):
        header = _header(path, container, stream)
        seeked = seek and _seek(container, stream, header, start)
        parts, first = [], None
        try:
            for index, y in _chunks(path, container, stream, header, seeked=seeked):
                first = index if first is None else first
                if stop is not None and index >= stop:
                    break
                lo, hi = max(start - index, 0), len(y) if stop is None else min(stop - index, len(y))
                if hi > lo:
                    parts.append(y[lo:hi])
        except _UnplacedError:
            first = start + 1
    if seeked and first is not None and first > start:  # the seek landed past the range: decode from the start
        return read(path, start, stop, seek=False)
    y = np.concatenate(parts) if parts else np.zeros((0, header.channels), np.float32)
    return y[:, 0] if header.channels == 1 else y


def blocks(path: str | Path, size: int) -> Iterator[np.ndarray]:
    """Decode a whole compressed file in blocks of ``size`` frames (the last one shorter), memory bounded.

    Raises
    ------
    AudioError
        As :func:`read`.
    """
    with _opened(path) as (container, stream):
        header = _header(path, container, stream)
        pending, count = [], 0
        for _, y in _chunks(path, container, stream, header, seeked=False):
            pending.append(y)
            count += len(y)
            while count >= size:
                joined = np.concatenate(pending)
                yield joined[:size]
                pending, count = [joined[size:]], count - size
        if count:
            yield np.concatenate(pending)
