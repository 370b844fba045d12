"""Figures a person would rather look at than read.

Matplotlib with the non-interactive Agg backend: every function writes a PNG
and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_images"]


def plot_images(
    images: np.ndarray,
    titles: Sequence[str],
    path: str | Path,
    *,
    clip_seconds: float,
    suptitle: str = "",
    columns: int = 4,
) -> Path:
    """Draw model inputs in a grid, one title each.

    Parameters
    ----------
    images : np.ndarray, shape (n, time, mels)
        One channel of each model input (height is time, width is mel bands).
        They are drawn transposed, time running left to right and frequency
        upwards, as spectrograms are usually read.
    titles : sequence of str
    path : str or Path
        Where the PNG goes.
    clip_seconds : float
        Length of a clip, for the time axis.
    """
    n = len(images)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image.T, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                  extent=(0, clip_seconds, 0, image.shape[1]))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=7)
        ax.set_ylabel("mel band", fontsize=7)
        ax.tick_params(labelsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
