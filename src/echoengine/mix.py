"""Soundscapes built from labelled clips, with the Raven tables that say what calls when.

Any single-label dataset becomes multi-label training and test data: each
soundscape is a background (a field recording, or noise) of ``duration``
seconds into which 1 to 4 (``events``) clips are mixed at random times and
signal-to-noise ratios. A clip's event is its audible part (leading and
trailing silence trimmed, as ESC-50 clips are padded); its box spans that
part in time and, in frequency, the band holding 95 % of its energy. Every
soundscape is written as FLAC with a Raven selection table beside it
(``NAME.selections.txt``), which :func:`echoengine.catalog.read_annotations`
reads back.

With ``test_fraction``, the clips are split by source recording (and the
backgrounds by file) into ``train/`` and ``test/`` soundscapes, so that no
recording is heard on both sides.

Examples
--------
>>> event_band(np.sin(2 * np.pi * 1000 * np.arange(48000) / 48000).astype("float32"), 48000)  # a 1 kHz tone
(1000.0, 1000.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import soundfile as sf

from echoengine import audio, catalog, formats, splits
from echoengine.config import AudioConfig
from echoengine.errors import AudioError, DataError

__all__ = ["event_band", "mix_parts", "mix_soundscapes", "split_sources", "trim_event"]

logger = logging.getLogger("echoengine")


def trim_event(y: np.ndarray, *, top_db: float = 40.0) -> tuple[np.ndarray, int]:
    """The audible part of a clip (silence trimmed at both ends, librosa's ``trim``) and its first sample."""
    trimmed, (start, _) = librosa.effects.trim(y, top_db=top_db)
    return (trimmed, int(start)) if len(trimmed) else (y, 0)


def event_band(y: np.ndarray, sample_rate: int, *, energy: float = 0.95) -> tuple[float, float]:
    """The frequency band (Hz) holding the central ``energy`` share of a signal's power."""
    power = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    cumulative = np.cumsum(power) / max(power.sum(), 1e-20)
    frequencies = np.fft.rfftfreq(len(y), 1 / sample_rate)
    tail = (1 - energy) / 2
    low = frequencies[min(np.searchsorted(cumulative, tail), len(frequencies) - 1)]
    high = frequencies[min(np.searchsorted(cumulative, 1 - tail), len(frequencies) - 1)]
    return float(low), float(max(high, low))


def _background(paths: Sequence[str], seconds: float, config: AudioConfig, rng: np.random.Generator) -> np.ndarray:
    n = round(seconds * config.sample_rate)
    if not paths:  # pink-ish noise
        white = rng.normal(size=n)
        spectrum = np.fft.rfft(white) / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / config.sample_rate), 20.0))
        noise = np.fft.irfft(spectrum, n)
        return (0.02 * noise / (np.std(noise) + 1e-12)).astype(np.float32)
    y = audio.load(paths[int(rng.integers(len(paths)))], config)
    if len(y) >= n:
        start = int(rng.integers(0, len(y) - n + 1))
        return y[start : start + n].copy()
    return np.tile(y, math.ceil(n / max(len(y), 1)))[:n].copy()


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64)) + 1e-20))


def _add_events(mix: np.ndarray, clips: pd.DataFrame, events: int, snr: tuple[float, float], config: AudioConfig,
                rng: np.random.Generator) -> list[dict]:
    """Add ``events`` random clips into ``mix`` (in place) at random onsets and SNRs; their boxes.

    An unreadable clip is skipped with a warning (the soundscape has one event fewer).
    """
    rate, n, level = config.sample_rate, len(mix), _rms(mix)
    rows = []
    for _ in range(events):
        clip = clips.iloc[int(rng.integers(len(clips)))]
        try:
            event, _ = trim_event(audio.load(clip["path"], config))
        except AudioError as error:
            logger.warning("skipping %s", error)
            continue
        event = event[:n]
        onset = int(rng.integers(0, n - len(event) + 1))
        ratio = 10 ** (float(rng.uniform(*snr)) / 20)
        segment = mix[onset : onset + len(event)]
        local = max(_rms(segment), 0.1 * level)
        mix[onset : onset + len(event)] = segment + event * (ratio * local / _rms(event))
        low, high = event_band(event, rate)
        rows.append({"start": onset / rate, "end": (onset + len(event)) / rate, "low_freq": low,
                     "high_freq": high, "label": clip["label"]})
    return rows


def mix_soundscapes(
    clips: pd.DataFrame,
    out: str | Path,
    *,
    count: int,
    backgrounds: Sequence[str] = (),
    duration: float = 30.0,
    events: tuple[int, int] = (1, 4),
    snr: tuple[float, float] = (-5.0, 15.0),
    config: AudioConfig | None = None,
    seed: int = 0,
    prefix: str = "soundscape",
) -> pd.DataFrame:
    """Write ``count`` soundscapes and their Raven tables into ``out``.

    Parameters
    ----------
    clips : DataFrame
        A scanned catalog of labelled clips (``path``, ``label``).
    backgrounds : sequence of paths
        Recordings to mix the events into (a random stretch of one each); noise when empty.
    events : (int, int)
        The fewest and most events per soundscape.
    snr : (float, float)
        Range of event-to-background RMS ratios in dB (over the event's span).

    Returns
    -------
    DataFrame
        The boxes written: ``path, start, end, low_freq, high_freq, label, positive``.
    """
    config, out = config or AudioConfig(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clips = clips[clips["label"] != ""].reset_index(drop=True)
    if clips.empty:
        raise DataError("no labelled clips to mix")
    if not 1 <= events[0] <= events[1]:
        raise DataError(f"events must be a range like 1-4, got {events[0]}-{events[1]}")
    boxes = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        try:
            mix = _background(list(backgrounds), duration, config, rng)
        except AudioError as error:  # an unreadable background: this soundscape goes on over noise
            logger.warning("skipping %s; noise instead", error)
            mix = _background([], duration, config, rng)
        rows = _add_events(mix, clips, int(rng.integers(events[0], events[1] + 1)), snr, config, rng)
        peak = float(np.abs(mix).max())
        if peak > 0.99:
            mix *= 0.99 / peak
        name = f"{prefix}_{index:04d}"
        path = out / f"{name}.flac"
        sf.write(path, mix, config.sample_rate, subtype="PCM_16")
        table = pd.DataFrame(rows, columns=["start", "end", "low_freq", "high_freq", "label"])
        table = table.sort_values("start", kind="stable").reset_index(drop=True).round(
            {"start": 3, "end": 3, "low_freq": 1, "high_freq": 1})
        formats.write_raven(table.assign(score=np.nan), out / f"{name}.selections.txt")
        boxes.append(table.assign(path=str(path.absolute()), positive=True))
    written = pd.concat(boxes, ignore_index=True) if boxes else pd.DataFrame(columns=catalog.ANNOTATION_COLUMNS)
    return written[catalog.ANNOTATION_COLUMNS]


def split_sources(clips: pd.DataFrame, backgrounds: Sequence[str], *, test_fraction: float,
                  seed: int = 0) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Clips split by source recording, and backgrounds by file, into ``train`` and ``test``."""
    parts = splits.split(clips, val_fraction=0.0, test_fraction=test_fraction, seed=seed, sparse_classes="drop")
    backgrounds = sorted(backgrounds)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(backgrounds))
    n_test = round(test_fraction * len(backgrounds))
    test_backgrounds = {backgrounds[i] for i in order[:n_test]}
    return {
        "train": (clips[parts == "train"], [b for b in backgrounds if b not in test_backgrounds]),
        "test": (clips[parts == "test"], [b for b in backgrounds if b in test_backgrounds]),
    }


def mix_parts(clips: pd.DataFrame, out: Path, *, count: int, backgrounds: Sequence[str], test_fraction: float,
              split_seed: int = 0, log=print, **mix_options) -> dict[str, pd.DataFrame]:
    """Soundscapes for training in ``out/train`` and for testing in ``out/test``, from disjoint sources.

    The clips are split by source recording and the backgrounds by file
    (:func:`split_sources`), so no recording is heard on both sides; the
    test part gets ``test_fraction`` of all soundscapes. ``mix_options`` are
    those of :func:`mix_soundscapes`. Returns the boxes of each part.
    """
    test_count = max(1, round(count * test_fraction / (1 - test_fraction)))
    counts = {"train": count, "test": test_count}
    written = {}
    for part, (part_clips, part_backgrounds) in split_sources(clips, backgrounds, test_fraction=test_fraction,
                                                              seed=split_seed).items():
        boxes = mix_soundscapes(part_clips, Path(out) / part, count=counts[part], backgrounds=part_backgrounds,
                                prefix=part, **mix_options)
        log(f"{part}: {counts[part]} soundscapes, {len(boxes)} events of {boxes['label'].nunique()} classes from "
            f"{part_clips['group'].nunique()} source recordings over {len(part_backgrounds)} backgrounds -> "
            f"{Path(out) / part}")
        written[part] = boxes
    return written
