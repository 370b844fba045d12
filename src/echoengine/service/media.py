"""A detection's audio and picture: the event with context as WAV bytes, its spectrogram as PNG bytes.

Both are made on request from the stored recording (nothing is kept): the
WAV with soundfile, the spectrogram with scipy (STFT), a matplotlib colour
map (no figure, no font, no network) and Pillow.

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
from matplotlib import colormaps
from PIL import Image
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

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
                    max_width: int = 1200, top_db: float = 80.0, colormap: str = "magma") -> bytes:
    """A spectrogram (low frequencies at the bottom, ``top_db`` of range) as a PNG image.

    The frequency axis is resized to ``height`` pixels and the time axis to
    one pixel per frame, at most ``max_width``.
    """
    if len(samples) < n_fft:
        samples = np.pad(samples, (0, n_fft - len(samples)))
    stft = ShortTimeFFT(hann(n_fft, sym=False), hop=hop, fs=rate)
    power = np.abs(stft.stft(samples)) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-12))
    db = np.clip(db - db.max(), -top_db, 0.0)
    levels = ((db + top_db) / top_db)[::-1]  # row 0 is the highest frequency
    pixels = (colormaps[colormap](levels)[..., :3] * 255).astype(np.uint8)
    image = Image.fromarray(pixels).resize((min(pixels.shape[1], max_width), height), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
