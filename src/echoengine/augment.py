"""Training-time augmentation: waveform, spectrogram masks, image rotation and mixup.

Waveform augmentations are audiomentations' (the Echo pipeline's set and
defaults); SpecAugment masks, rotation and mixup are small torch functions.
Every one is switched off by a probability of 0 in
:class:`~echoengine.config.AugmentConfig`.

Reproducibility: variant ``k`` of a sample is a pure function of
``(seed, k, sample key)``. :func:`variant_seed` derives the seed, and each
stage draws from generators seeded with it. audiomentations draws from
Python's and NumPy's global generators, so :class:`WaveformAugmenter` seeds
them for the call and restores their previous state afterwards.

Examples
--------
>>> import numpy as np
>>> from echoengine.config import AugmentConfig
>>> augment = WaveformAugmenter(AugmentConfig(noise_p=1.0), sample_rate=16000)
>>> y = np.zeros(16000, dtype="float32")
>>> a = augment(y, seed=variant_seed(0, 3, "rain.wav"))
>>> b = augment(y, seed=variant_seed(0, 3, "rain.wav"))
>>> bool(np.array_equal(a, b)), bool(np.abs(a).max() > 0)
(True, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import threading
from collections.abc import Iterator

import numpy as np
import torch

from echoengine.config import AugmentConfig

__all__ = [
    "WaveformAugmenter",
    "mixup",
    "rotate",
    "spec_augment",
    "variant_seed",
]


def variant_seed(seed: int, variant: int, key: str) -> int:
    """A 63-bit seed for variant ``variant`` of the sample named ``key``.

    Examples
    --------
    >>> variant_seed(0, 1, "a.wav") == variant_seed(0, 1, "a.wav") != variant_seed(0, 2, "a.wav")
    True
    """
    digest = hashlib.blake2b(f"{seed}\0{variant}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global generators, restoring them on exit.

    A lock makes the seeded section exclusive, so that threads augmenting at
    the same time neither see nor disturb each other's draws.
    """
    # audiomentations has no generator argument: its global ones are the only way in.
    with _GLOBAL_RNG_LOCK:
        py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
        random.seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


class WaveformAugmenter:
    """The Echo pipeline's waveform augmentations (noise, stretch, pitch, shift).

    Parameters
    ----------
    config : AugmentConfig
    sample_rate : int

    Notes
    -----
    Time stretch keeps the length unchanged; shift rolls the signal over.
    """

    def __init__(self, config: AugmentConfig, *, sample_rate: int) -> None:
        # audiomentations imports scipy.signal and more (about a second): only where training augments
        from audiomentations import AddGaussianNoise, Compose, PitchShift, Shift, TimeStretch

        self.sample_rate = sample_rate
        transforms = []
        if config.noise_p > 0:
            transforms.append(AddGaussianNoise(
                min_amplitude=config.noise_min_amplitude, max_amplitude=config.noise_max_amplitude, p=config.noise_p))
        if config.time_stretch_p > 0:
            transforms.append(TimeStretch(
                min_rate=config.time_stretch_min_rate, max_rate=config.time_stretch_max_rate,
                leave_length_unchanged=True, p=config.time_stretch_p))
        if config.pitch_shift_p > 0:
            transforms.append(PitchShift(
                min_semitones=config.pitch_shift_min_semitones, max_semitones=config.pitch_shift_max_semitones,
                p=config.pitch_shift_p))
        if config.shift_p > 0:
            transforms.append(Shift(
                min_shift=config.shift_min_fraction, max_shift=config.shift_max_fraction, p=config.shift_p))
        self._compose = Compose(transforms) if transforms else None

    @property
    def active(self) -> bool:
        """Whether any transform can apply."""
        return self._compose is not None

    def __call__(self, y: np.ndarray, *, seed: int) -> np.ndarray:
        """Augment a float32 mono signal; the same seed gives the same result."""
        if self._compose is None:
            return y
        with _seeded_global_rngs(seed):
            out = self._compose(samples=np.ascontiguousarray(y, dtype=np.float32), sample_rate=self.sample_rate)
        return np.ascontiguousarray(out, dtype=np.float32)


def spec_augment(
    spec: torch.Tensor,
    *,
    time_masks: int,
    time_mask_fraction: float,
    freq_masks: int,
    freq_mask_fraction: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """SpecAugment time and frequency masks (Park et al. 2019) on one spectrogram.

    Each mask covers a random width of up to ``fraction`` of its axis and is
    filled with the spectrogram's minimum (silence in dB).

    Parameters
    ----------
    spec : torch.Tensor, shape (frames, bins)
        Time x frequency (the model image layout).

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> out = spec_augment(torch.ones(100, 40), time_masks=1, time_mask_fraction=0.2,
    ...                    freq_masks=1, freq_mask_fraction=0.2, generator=g)
    >>> bool((out == 1).all())  # masks are filled with the minimum, here also 1
    True
    """
    out = spec.clone()
    fill = spec.min()
    for axis, count, fraction in ((0, time_masks, time_mask_fraction), (1, freq_masks, freq_mask_fraction)):
        size = spec.shape[axis]
        max_width = int(size * fraction)
        for _ in range(count if max_width > 0 else 0):
            width = int(torch.randint(0, max_width + 1, (1,), generator=generator))
            start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
            out.narrow(axis, start, width).fill_(fill)
    return out


def rotate(image: torch.Tensor, *, degrees: float) -> torch.Tensor:
    """Rotate images by ``degrees`` around their centre (bilinear, zero fill).

    Parameters
    ----------
    image : torch.Tensor, shape (..., height, width)

    Examples
    --------
    >>> x = torch.rand(1, 8, 8)
    >>> bool(torch.allclose(rotate(x, degrees=0.0), x, atol=1e-6))
    True
    """
    if degrees == 0:
        return image
    shape = image.shape
    flat = image.reshape(-1, 1, *shape[-2:])
    theta = math.radians(degrees)
    height, width = shape[-2:]
    # affine_grid works in normalised coordinates; correct for the aspect ratio.
    matrix = torch.tensor(
        [[math.cos(theta), -math.sin(theta) * height / width, 0.0],
         [math.sin(theta) * width / height, math.cos(theta), 0.0]],
        dtype=image.dtype, device=image.device,
    ).expand(flat.shape[0], 2, 3)
    grid = torch.nn.functional.affine_grid(matrix, list(flat.shape), align_corners=False)
    rotated = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated.reshape(shape)


def mixup(
    inputs: torch.Tensor, targets: torch.Tensor, *, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each example of a batch with a random partner (Zhang et al. 2018).

    ``lambda ~ Beta(alpha, alpha)`` per example; inputs and (one-hot or
    multi-hot) targets are mixed with the same weight.

    Examples
    --------
    >>> x, y = mixup(torch.rand(4, 3), torch.eye(4), alpha=0.4, rng=np.random.default_rng(0))
    >>> bool(torch.allclose(y.sum(dim=1), torch.ones(4)))
    True
    """
    batch = inputs.shape[0]
    lam = torch.as_tensor(rng.beta(alpha, alpha, size=batch), device=inputs.device)
    partner = torch.as_tensor(rng.permutation(batch), device=inputs.device)
    lam_x = lam.view(-1, *([1] * (inputs.ndim - 1))).to(inputs.dtype)
    lam_y = lam.view(-1, *([1] * (targets.ndim - 1))).to(targets.dtype)
    return lam_x * inputs + (1 - lam_x) * inputs[partner], lam_y * targets + (1 - lam_y) * targets[partner]
