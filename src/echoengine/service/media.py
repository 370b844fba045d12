"""A detection's audio and picture: the event with context as WAV bytes, its spectrogram as PNG bytes.

Both are made on request from the stored recording (nothing is kept): the
WAV with soundfile, the spectrogram with numpy's FFT and Pillow (its colour
gradient), which the serving runtime has without scipy or matplotlib.

Examples
--------
>>> t = np.arange(16000) / 16000
>>> png = spectrogram_png(np.sin(2 * np.pi * 3000 * t).astype("float32"), 16000)
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
>>> wav_bytes(np.zeros(160, "float32"), 16000)[:4]
b'RIFF'
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from PIL import Image, ImageOps

__all__ = ["CONTEXT_SECONDS", "context_span", "spectrogram_png", "wav_bytes"]

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


def spectrogram_png(samples: np.ndarray, rate: int, *, n_fft: int = 1024, hop: int = 256, height: int = 256,
                    max_width: int = 1200, top_db: float = 80.0) -> bytes:
    """A spectrogram (low frequencies at the bottom, ``top_db`` of range, dark to bright) as a PNG image.

    Frames are ``hop`` samples apart, or farther for long clips (at most
    twice ``max_width`` frames are computed); the image is ``height`` pixels
    high and one pixel per frame wide, at most ``max_width``.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) < n_fft:
        samples = np.pad(samples, (0, n_fft - len(samples)))
    hop = max(hop, -(-(len(samples) - n_fft) // (2 * max_width)))
    frames = np.lib.stride_tricks.sliding_window_view(samples, n_fft)[::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-12))
    levels = (np.clip(db - db.max(), -top_db, 0.0) + top_db) / top_db
    gray = Image.fromarray((levels.T[::-1] * 255).astype(np.uint8))  # rows: frequencies, highest first
    image = ImageOps.colorize(gray, black="#000004", mid="#b73779", white="#fcfdbf")  # magma's ends and middle
    image = image.resize((min(gray.width, max_width), height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
