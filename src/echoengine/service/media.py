"""A detection's audio and picture: the event with context as WAV bytes, its spectrogram as PNG bytes.

Both are made on request from the stored recording (nothing is kept): the
WAV with soundfile, the spectrogram with numpy's FFT and Pillow (its colour
gradient, its drawing and its built-in font), which the serving runtime has
without scipy or matplotlib. The picture has labelled axes (time in seconds
into the recording, frequency in kHz) and marks the event's time span: a bar
above the plot, lines at its ends, and the context either side dimmed.

Examples
--------
>>> t = np.arange(16000) / 16000
>>> picture = spectrogram_png(np.sin(2 * np.pi * 3000 * t).astype("float32"), 16000, offset=9.0, event=(9.2, 9.8))
>>> picture.data[:8] == b"\\x89PNG\\r\\n\\x1a\\n", picture.box, (picture.start, picture.end)
(True, (56, 20, 480, 256), (9.0, 10.0))
>>> wav_bytes(np.zeros(160, "float32"), 16000)[:4]
b'RIFF'
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["CONTEXT_SECONDS", "Picture", "context_span", "nice_ticks", "spectrogram_png", "wav_bytes"]

#: Audio given before and after an event.
CONTEXT_SECONDS = 1.0


def context_span(start: float, end: float, duration: float, context: float = CONTEXT_SECONDS) -> tuple[float, float]:
    """An event's span with ``context`` seconds either side, within the recording.

    Examples
    --------
    >>> context_span(0.5, 5.5, 6.0)
    (0.0, 6.0)
    >>> context_span(10.0, 15.0, 60.0)
    (9.0, 16.0)
    """
    return max(0.0, start - context), min(duration, end + context)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Mono samples as a 16-bit PCM WAV file."""
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@dataclass(frozen=True)
class Picture:
    """A PNG image and where its plot lies: ``box`` (left, top, width, height, pixels) spans ``start`` to
    ``end`` seconds into the recording, from 0 Hz at the bottom to the Nyquist frequency at the top."""

    data: bytes
    box: tuple[int, int, int, int]
    start: float
    end: float


#: Space around the plot for the labels (pixels): left, top, right, bottom.
_MARGIN = (56, 20, 16, 42)
_INK, _PAPER, _EVENT = "#1b1b1b", "#ffffff", "#0a7d55"


def nice_ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Round values between ``low`` and ``high`` (both included), at most ``most`` of them, a 1-2-5 step apart.

    Examples
    --------
    >>> nice_ticks(9.0, 16.0)
    [9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0]
    >>> nice_ticks(0.0, 16.0, most=6)
    [0.0, 5.0, 10.0, 15.0]
    """
    span = max(high - low, 1e-9)
    step = next(m * 10.0 ** e for e in range(math.floor(math.log10(span / most)) - 1, 99) for m in (1, 2, 5)
                if span / (m * 10.0 ** e) < most)
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 10) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def _levels(samples: np.ndarray, n_fft: int, hop: int, max_width: int, top_db: float) -> np.ndarray:
    """Power in dB, scaled to [0, 1] over ``top_db`` below the peak: (frequencies, frames), the lowest first."""
    if len(samples) < n_fft:
        samples = np.pad(samples, (0, n_fft - len(samples)))
    hop = max(hop, -(-(len(samples) - n_fft) // (2 * max_width)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-12))
    return ((np.clip(db - db.max(), -top_db, 0.0) + top_db) / top_db).T


def _axes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], seconds: tuple[float, float],
          nyquist_khz: float) -> None:
    """Ticks and labels: time (s) under the plot, frequency (kHz) left of it."""
    left, top, width, height = box
    font = ImageFont.load_default(15)  # shown scaled down in the page
    start, end = seconds
    draw.rectangle((left - 1, top - 1, left + width, top + height), outline=_INK)
    for t in nice_ticks(start, end, most=max(2, width // 60)):
        x = left + round((t - start) / (end - start) * (width - 1))
        draw.line((x, top + height, x, top + height + 4), fill=_INK)
        draw.text((x, top + height + 5), f"{t:g}", fill=_INK, font=font, anchor="ma")
    draw.text((left + width // 2, top + height + 23), "time (s)", fill=_INK, font=font, anchor="ma")
    for f in nice_ticks(0.0, nyquist_khz, most=max(2, height // 40)):
        y = top + height - 1 - round(f / nyquist_khz * (height - 1))
        draw.line((left - 5, y, left - 1, y), fill=_INK)
        draw.text((left - 7, y), f"{f:g}", fill=_INK, font=font, anchor="rm")
    draw.text((4, 3), "kHz", fill=_INK, font=font, anchor="la")


def _mark(image: Image.Image, box: tuple[int, int, int, int], seconds: tuple[float, float],
          event: tuple[float, float]) -> None:
    """Dim the plot outside the event, draw lines at its ends and a bar above the plot."""
    left, top, width, height = box
    start, end = seconds
    x0, x1 = (left + round((min(max(t, start), end) - start) / (end - start) * (width - 1)) for t in event)
    plot = image.crop((left, top, left + width, top + height))
    dim = Image.blend(plot, Image.new("RGB", plot.size, "black"), 0.45)
    for a, b in ((0, x0 - left), (x1 - left + 1, width)):
        if b > a:
            plot.paste(dim.crop((a, 0, b, height)), (a, 0))
    image.paste(plot, (left, top))
    draw = ImageDraw.Draw(image)
    for x in (x0, x1):
        draw.line((x, top, x, top + height - 1), fill="#ffffff", width=1)
    draw.rectangle((x0, top - 9, x1, top - 4), fill=_EVENT)


def spectrogram_png(samples: np.ndarray, rate: int, *, offset: float = 0.0, event: tuple[float, float] | None = None,
                    n_fft: int = 1024, hop: int = 256, height: int = 256, min_width: int = 480,
                    max_width: int = 1200, top_db: float = 80.0) -> Picture:
    """A spectrogram (low frequencies at the bottom, ``top_db`` of range, dark to bright) with axes, as PNG.

    ``offset`` is the clip's start in the recording (the time axis reads
    recording seconds) and ``event`` the event's span there, marked when
    given. Frames are ``hop`` samples apart, or farther for long clips (at
    most twice ``max_width`` frames are computed); the plot is ``height``
    pixels high and one pixel per frame wide, within ``min_width`` and
    ``max_width``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    levels = _levels(samples, n_fft, hop, max_width, top_db)
    gray = Image.fromarray((levels[::-1] * 255).astype(np.uint8))  # rows: frequencies, highest first
    plot = ImageOps.colorize(gray, black="#000004", mid="#b73779", white="#fcfdbf")  # magma's ends and middle
    left, top, right, bottom = _MARGIN
    box = (left, top, min(max(gray.width, min_width), max_width), height)
    plot = plot.resize(box[2:], Image.Resampling.BILINEAR)
    image = Image.new("RGB", (left + box[2] + right, top + height + bottom), _PAPER)
    image.paste(plot, (left, top))
    seconds = (float(offset), float(offset) + len(samples) / rate)
    _axes(ImageDraw.Draw(image), box, seconds, rate / 2000)
    if event is not None:
        _mark(image, box, seconds, event)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Picture(buffer.getvalue(), box, *seconds)
