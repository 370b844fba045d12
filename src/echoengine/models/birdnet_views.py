"""Playback-speed views of BirdNET windows: a window's audio as if played faster or slower.

BirdNET was trained on bird song, mostly 1-10 kHz at 48 kHz; much of what
else people record (dogs, frogs, engines, rain, cattle) lives lower. Played
twice as fast, a window's content moves an octave up, where BirdNET's
features are sharpest. A view at ``speed`` of a 3 s window (``model.birdnet_speeds``):

* ``speed`` 1: the window;
* an integer ``speed`` k > 1: the window resampled to 1/k of its samples
  (a Kaiser-windowed sinc low-pass, scipy's ``resample_poly(x, 1, k)``) and
  read at 48 kHz again, repeated k times to fill 3 s;
* ``speed`` 1/k: the window resampled to k times its samples, which fill k
  windows: their features are averaged.

Every step is a fixed convolution (:func:`faster`, :func:`slower`), so the
views run inside an exported ONNX graph as in training.

Examples
--------
>>> windows = torch.randn(2, 144000)
>>> speed_view(windows, 2.0).shape, speed_view(windows, 0.5).shape
(torch.Size([2, 144000]), torch.Size([4, 144000]))
>>> speed_factor(0.5), speed_factor(3.0)
(2, 3)
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F  # noqa: N812

__all__ = ["faster", "lowpass", "slower", "speed_factor", "speed_view"]


def speed_factor(speed: float) -> int:
    """The integer resampling factor of a speed (:data:`echoengine.config.BIRDNET_SPEEDS`): 2 for 2 and 0.5."""
    return round(speed if speed >= 1 else 1 / speed)


@functools.cache
def lowpass(factor: int) -> torch.Tensor:
    """The anti-aliasing filter of a resampling by ``factor``: scipy's ``resample_poly`` filter, float32.

    ``firwin(20 factor + 1, 1 / factor, window=("kaiser", 5.0))``: a sinc cut
    at the lower rate's Nyquist frequency under a Kaiser window, unit DC gain.
    """
    half = 10 * factor
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    h = torch.sinc(taps / factor) * torch.kaiser_window(2 * half + 1, periodic=False, beta=5.0, dtype=torch.float64)
    return (h / h.sum()).float()


def faster(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(batch, n) -> (batch, ceil(n / factor)): low-passed and decimated, as ``resample_poly(x, 1, factor)``."""
    h = lowpass(factor).to(x.device)
    return F.conv1d(x[:, None], h[None, None], stride=factor, padding=10 * factor)[:, 0]


def slower(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(batch, n) -> (batch, n factor): upsampled and low-passed, as ``resample_poly(x, factor, 1)``."""
    h = lowpass(factor).to(x.device) * factor
    half = 10 * factor
    return F.conv_transpose1d(x[:, None], h[None, None], stride=factor)[:, 0, half : half + x.shape[1] * factor]


def speed_view(windows: torch.Tensor, speed: float) -> torch.Tensor:
    """The view at ``speed`` of windows (n, samples): (n, samples) faster, (n k, samples) ``1/k`` slower.

    A faster view repeats the resampled window to the window's length; a
    slower one is cut into k windows, window i's views at rows ``i k ...
    i k + k - 1``.
    """
    factor, n = speed_factor(speed), windows.shape[1]
    if factor == 1:
        return windows
    if speed > 1:
        short = faster(windows, factor)
        return short.repeat(1, math.ceil(n / short.shape[1]))[:, :n]
    return slower(windows, factor).reshape(-1, n)
