"""A small synthetic dataset of animal-like calls, for demos and tests.

Everything here is SYNTHETIC: tones, sweeps and pulse trains over noise,
made to be told apart by their frequency contour, pulse rate and harmonics.
The class names start with ``synthetic-`` and the folder holds a README that
says so. It lets ``echoengine`` run end to end on a machine with no data.

Examples
--------
>>> import tempfile
>>> root = make_dataset(tempfile.mkdtemp(), classes=3, files_per_class=2)
>>> sorted(p.name for p in root.iterdir())
['README.txt', 'synthetic-harmonic', 'synthetic-trill', 'synthetic-upsweep']
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = ["CALLS", "PHOTO_REGIONS", "make_dataset", "make_photo_dataset", "synthesize_call"]


def _sweeps(t: np.ndarray, rng: np.random.Generator, *, period: tuple, length: float, start: tuple, stop: tuple):
    """Frequency sweeps of ``length`` s repeated every ``period`` s, from ``start`` to ``stop`` Hz."""
    phase_t = t % rng.uniform(*period)
    f0, f1 = rng.uniform(*start), rng.uniform(*stop)
    freq = f0 + (f1 - f0) * np.clip(phase_t / length, 0, 1)
    return np.sin(2 * np.pi * np.cumsum(freq) / _RATE) * (phase_t < length)


def _upsweep(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _sweeps(t, rng, period=(0.6, 0.9), length=0.3, start=(1800, 2200), stop=(5500, 6500))


def _downsweep(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _sweeps(t, rng, period=(0.9, 1.2), length=0.4, start=(8000, 9000), stop=(3000, 3500))


def _trill(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rate, carrier = rng.uniform(18, 24), rng.uniform(3800, 4200)
    gate = (np.sin(2 * np.pi * rate * t) > 0.3) * (t % 2.0 < 1.2)
    return np.sin(2 * np.pi * carrier * t) * gate


def _harmonic(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f0 = rng.uniform(550, 650) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / _RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    return tone * (t % 1.5 < 1.0) * 0.6


def _croak(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rate, carrier = rng.uniform(7, 9), rng.uniform(350, 450)
    gate = np.sin(2 * np.pi * rate * t) > 0.5
    return np.sign(np.sin(2 * np.pi * carrier * t)) * gate * 0.4


_RATE = 32000
#: The call generators by class name, in the order classes are taken.
CALLS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "synthetic-upsweep": _upsweep,
    "synthetic-trill": _trill,
    "synthetic-harmonic": _harmonic,
    "synthetic-croak": _croak,
    "synthetic-downsweep": _downsweep,
}


def synthesize_call(name: str, *, seconds: float, rng: np.random.Generator, snr_db: float = 10.0) -> np.ndarray:
    """One recording of a synthetic call over pink-ish noise, at 32 kHz.

    Returns
    -------
    np.ndarray, float32, peak about 0.5
    """
    t = np.arange(int(seconds * _RATE)) / _RATE
    call = CALLS[name](t - rng.uniform(0, 0.5), rng)
    noise = np.cumsum(rng.normal(size=len(t))) * 0.02
    noise = noise - np.convolve(noise, np.ones(64) / 64, mode="same") + rng.normal(size=len(t)) * 0.3
    noise *= np.sqrt(np.mean(call**2) + 1e-12) / (np.sqrt(np.mean(noise**2)) + 1e-12) / 10 ** (snr_db / 20)
    mix = call + noise
    return (0.5 * mix / (np.abs(mix).max() + 1e-12)).astype(np.float32)


def make_dataset(
    root: str | Path, *, classes: int = 4, files_per_class: int = 6, seed: int = 0
) -> Path:
    """Write a folder-per-class dataset of synthetic calls and return its folder.

    Each class gets ``files_per_class`` files of 2 to 8 s, alternately WAV
    and FLAC at 32 kHz. Files come in pairs cut from one synthetic
    "recording" (``<call>_recNN_a`` and ``<call>_recNN_b``), so
    ``--group-regex '^(.+_rec\\d+)_'`` groups them as a real dataset's clips of
    one source would be.
    """
    if not 1 <= classes <= len(CALLS):
        raise ValueError(f"classes must be in [1, {len(CALLS)}], got {classes}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in list(CALLS)[:classes]:
        folder = root / name
        folder.mkdir(exist_ok=True)
        for i in range(files_per_class):
            y = synthesize_call(name, seconds=float(rng.uniform(2.0, 8.0)), rng=rng, snr_db=float(rng.uniform(3, 15)))
            extension = "wav" if i % 2 == 0 else "flac"
            call = name.removeprefix("synthetic-")
            sf.write(folder / f"{call}_rec{i // 2:02d}_{'ab'[i % 2]}.{extension}", y, _RATE)
    (root / "README.txt").write_text(
        "SYNTHETIC data made by echoengine.synthetic.make_dataset: computer-generated tones, sweeps\n"
        "and pulse trains over noise, not recordings of animals. For demos and tests only.\n",
        encoding="utf-8",
    )
    return root


#: Classes of :func:`make_photo_dataset`: a region (top, bottom, left, right in pixels) of one of
#: scikit-learn's two sample photos (427 x 640), each of a colour and texture of its own.
PHOTO_REGIONS = {"sky": ("china.jpg", (0, 130, 0, 640)), "ground": ("china.jpg", (300, 427, 0, 640)),
                 "petals": ("flower.jpg", (150, 280, 230, 410)), "leaves": ("flower.jpg", (0, 427, 450, 640))}


def make_photo_dataset(root: str | Path, *, crops_per_class: int = 8, seed: int = 0,
                       classes: tuple[str, ...] = tuple(PHOTO_REGIONS)) -> Path:
    """A small photo dataset (a folder per class) cut from the photos that ship with scikit-learn.

    Each class is a region of ``china.jpg`` or ``flower.jpg``
    (:data:`PHOTO_REGIONS`: sky, ground, petals, leaves); each of its
    images is a square crop of a random place and size in the region (40
    pixels up to the region's height), resized to 48 to 96 pixels and saved
    as JPEG or PNG in turn. Seeds give disjoint-looking crops, not disjoint
    pixels: a test set from another seed shares the regions, as photos of
    one camera trap share its view.

    Examples
    --------
    >>> import tempfile
    >>> root = make_photo_dataset(tempfile.mkdtemp(), crops_per_class=2)
    >>> sorted(p.name for p in (root / "sky").iterdir())
    ['sky-0.jpg', 'sky-1.png']
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images  # scikit-learn's own files: nothing is downloaded

    samples = load_sample_images()
    photos = {Path(name).name: image for name, image in zip(samples.filenames, samples.images, strict=True)}
    rng = np.random.default_rng(seed)
    root = Path(root)
    for label in classes:
        name, (top, bottom, left, right) = PHOTO_REGIONS[label]
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(crops_per_class):
            side = int(rng.integers(40, min(bottom - top, right - left) + 1))
            y, x = int(rng.integers(top, bottom - side + 1)), int(rng.integers(left, right - side + 1))
            crop = Image.fromarray(photos[name][y : y + side, x : x + side])
            out = int(rng.integers(48, 97))
            file_name = f"{label}-{i}.{('jpg', 'png')[i % 2]}"
            crop.resize((out, out), Image.Resampling.BILINEAR).save(root / label / file_name)
    (root / "README.txt").write_text("Crops of scikit-learn's sample photos (sklearn.datasets.load_sample_images: "
                                     "china.jpg, flower.jpg), a folder per region: a test set for the photo path.\n",
                                     encoding="utf-8")
    return root
