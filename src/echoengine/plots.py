"""Figures a person would rather look at than read.

Matplotlib with the non-interactive Agg backend: every function writes a PNG
(whole: a temporary file, then a rename) and returns its path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from echoengine.files import write_atomic

__all__ = ["detection_layout", "detections_over_time", "plot_confusion", "plot_cv_boxplot", "plot_history",
           "plot_images"]


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
    return _save(fig, path)


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    fig.tight_layout()
    return _write(fig, path, dpi)


def _write(fig, path: str | Path, dpi: int) -> Path:
    """Save ``fig`` whole at ``path`` (a PNG unless its suffix names another format), close it, return the path."""
    path = Path(path)
    image_format = path.suffix.lower().lstrip(".")
    if image_format not in fig.canvas.get_supported_filetypes():
        path, image_format = path.with_name(path.name + ".png"), "png"  # what savefig would write: name it
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # the temporary name has no image suffix: the format is given
        write_atomic(path, lambda temporary: fig.savefig(temporary, dpi=dpi, format=image_format))
    finally:
        plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """A confusion matrix normalised per true class (rows sum to 1), counts written in the cells.

    Parameters
    ----------
    matrix : np.ndarray, shape (n_classes, n_classes)
        Counts; rows are true classes, columns predicted ones.
    """
    n = len(classes)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = max(5.0, 0.28 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), classes, rotation=90, fontsize=max(4, 9 - n // 10))
    ax.set_yticks(range(n), classes, fontsize=max(4, 9 - n // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(title or f"confusion matrix (accuracy {accuracy:.1%}, {int(matrix.sum())} clips)", fontsize=10)
    return _save(fig, path)


def plot_history(history: pd.DataFrame, path: str | Path, *, best_epoch: int | None = None) -> Path:
    """Training curves: loss, accuracy and learning rate per epoch, train against validation."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, name in zip(axes, ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{name}"], marker=".", label="train")
        ax.plot(history["epoch"], history[f"val_{name}"], marker=".", label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[2].semilogy(history["epoch"], history["learning_rate"], marker=".", color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    return _save(fig, path)


def plot_cv_boxplot(histories: Sequence[pd.DataFrame], path: str | Path, *, column: str = "val_accuracy") -> Path:
    """Per epoch, a box of ``column`` across the folds (folds that stopped early drop out)."""
    epochs = sorted(set().union(*(set(h["epoch"]) for h in histories)))
    values = [[float(h.loc[h["epoch"] == e, column].iloc[0]) for h in histories if e in set(h["epoch"])]
              for e in epochs]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(epochs) + 2), 4.5))
    ax.boxplot(values, positions=epochs, widths=0.6)
    ax.plot(epochs, [np.mean(v) for v in values], color="tab:orange", marker=".", label="mean over folds")
    ax.set_xlabel("epoch")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_title(f"{column.replace('_', ' ')} per epoch across {len(histories)} folds")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def detection_layout(events: pd.DataFrame) -> pd.DataFrame:
    """Where each event goes on the summary plot: time-stamped files by time of day, the others end to end.

    Parameters
    ----------
    events : DataFrame
        ``file``, ``start``, ``end`` (seconds in the file) and ``when`` (the
        event's clock time, None when the file name carries no time stamp).

    Returns
    -------
    DataFrame
        Per event (same index): ``axis`` ("time of day" or "end to end"),
        ``x`` and ``width``, in hours since midnight on the time-of-day axis
        (days folded onto one), in seconds from the first unstamped file's
        start on the other, where those files are laid end to end in order.

    Examples
    --------
    >>> events = pd.DataFrame({"file": ["x_20240501_063000.wav", "a.wav", "b.wav"], "start": [0.0, 0.0, 5.0],
    ...                        "end": [36.0, 5.0, 10.0], "when": [pd.Timestamp("2024-05-01 06:30"), None, None]})
    >>> detection_layout(events).to_dict("list")
    {'axis': ['time of day', 'end to end', 'end to end'], 'x': [6.5, 0.0, 10.0], 'width': [0.01, 5.0, 5.0]}
    """
    layout = pd.DataFrame({"axis": "end to end", "x": 0.0, "width": 0.0}, index=events.index)
    stamped = events["when"].notna().to_numpy()
    if stamped.any():
        when = pd.to_datetime(events.loc[stamped, "when"])
        layout.loc[stamped, "axis"] = "time of day"
        layout.loc[stamped, "x"] = (when - when.dt.normalize()).dt.total_seconds() / 3600
        layout.loc[stamped, "width"] = (events.loc[stamped, "end"] - events.loc[stamped, "start"]) / 3600
    others = events[~stamped]
    offsets, position = {}, 0.0
    for file, group in others.groupby("file", sort=False):
        offsets[file] = position
        position += float(group["end"].max())
    layout.loc[~stamped, "x"] = others["start"] + others["file"].map(offsets)
    layout.loc[~stamped, "width"] = others["end"] - others["start"]
    return layout


def detections_over_time(events: pd.DataFrame, path: str | Path, *, max_species: int = 30) -> Path:
    """One row per species, a mark per detected event along time, coloured by score.

    Events of files whose names carry a time stamp are drawn on a time-of-day
    axis (0 to 24 h, days folded onto one); those of the other files, in a
    panel of their own below, with the files laid end to end (see
    :func:`detection_layout`).

    Parameters
    ----------
    events : DataFrame
        ``file``, ``label``, ``start``, ``end``, ``score`` and ``when`` (the
        event's clock time, or None when the file name carries no time stamp).
    max_species : int
        The species with most events are drawn.
    """
    counts = events["label"].value_counts()
    species = sorted(counts.index[:max_species], key=lambda s: (-counts[s], s))
    layout = detection_layout(events)
    axes_names = [a for a in ("time of day", "end to end") if (layout["axis"] == a).any()] or ["end to end"]
    height = 1.2 + 0.35 * max(len(species), 1)
    fig, axes = plt.subplots(len(axes_names), 1, figsize=(11, height * len(axes_names)), squeeze=False,
                             layout="constrained")  # room for one colour bar beside all panels
    rows = {s: i for i, s in enumerate(species)}
    colours = plt.cm.viridis(np.clip(events["score"].to_numpy(dtype=float), 0, 1))
    for ax, name in zip(axes[:, 0], axes_names, strict=True):
        mine = (layout["axis"] == name).to_numpy() & events["label"].isin(rows).to_numpy()
        for left, w, label, colour in zip(layout["x"][mine], layout["width"][mine], events["label"][mine],
                                          colours[mine], strict=True):
            ax.barh(rows[label], w, left=left, height=0.6, color=colour, edgecolor=colour, linewidth=2)
        if name == "time of day":
            ax.set_xlim(0, 24)
            ax.set_xticks(range(0, 25, 3), [f"{h:02d}:00" for h in range(0, 25, 3)])
            ax.set_xlabel("time of day (from the time stamps in the file names)")
        else:
            files = events.loc[layout["axis"] == name, "file"].nunique()
            ax.set_xlabel(f"seconds ({files} file(s) without a time stamp in the name, end to end)"
                          if len(axes_names) > 1 else "seconds (files end to end)")
        ax.set_yticks(range(len(species)), [f"{s} ({counts[s]})" for s in species])
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_title("detections over time (colour: score)" if len(events) else "no detections")
    fig.colorbar(plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 1)), ax=list(axes[:, 0]), label="score",
                 pad=0.01)
    return _write(fig, path, 110)
