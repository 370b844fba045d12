"""The pack ``bench/finetune_study.py`` runs on: BirdNET's model file and the study's clips, small enough to travel.

A GPU machine that gets only the repository's files (at most 64 MiB) and has
no echoengine dependencies beyond torch, numpy, pandas and scikit-learn reads
it: the BirdNET V2.4 FP32 tflite file (CC BY-NC-SA 4.0), every clip resampled
to 48 kHz mono by echoengine's loader and stored as Ogg Opus (the runs of
digital silence listed apart, to be restored exactly), and ``clips.csv`` with
the folds ``echoengine cv`` makes. Only :func:`prepare` and
:func:`check_fidelity` need echoengine, imported when they run.

Examples
--------
``.venv/bin/python bench/finetune_study.py --prepare .study`` calls :func:`prepare`.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F  # noqa: N812

SAMPLE_RATE = 48000
CLIP_SAMPLES = 240000
MIN_ZERO_RUN = 480  # 10 ms of exact zeros: stored apart, restored after decoding


def per_class_share(labels: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of the training rows ``train`` of each class (rounded up, at least one), drawn at random: the
    data-size axis of ``finetune_study.py``, drawn alike by ``small_data.py`` for the frozen heads (seed: the fold).

    >>> per_class_share(np.array([0, 0, 0, 0, 1, 1]), np.arange(6), 0.5, seed=0).size
    3
    """
    if fraction >= 1:
        return train
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(rows)[: max(1, math.ceil(fraction * len(rows)))]
            for rows in (train[labels[train] == label] for label in np.unique(labels[train]))]
    return np.sort(np.concatenate(keep))


def zero_runs(y: np.ndarray, *, min_length: int = MIN_ZERO_RUN) -> list[tuple[int, int]]:
    """(start, stop) of the runs of at least ``min_length`` exact zeros of a signal."""
    edges = np.diff(np.concatenate([[0], (y == 0).astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = stops - starts >= min_length
    return [(int(a), int(b)) for a, b in zip(starts[keep], stops[keep], strict=True)]


def encode_opus(y: np.ndarray, path: Path, *, kbps: int) -> None:
    """Write a 48 kHz mono float signal as Ogg Opus with ffmpeg's libopus."""
    command = ["ffmpeg", "-v", "error", "-y", "-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1", "-i", "-",
               "-c:a", "libopus", "-b:a", f"{kbps}k", "-application", "audio", "-f", "ogg", str(path)]
    subprocess.run(command, input=np.ascontiguousarray(y, dtype="<f4").tobytes(), check=True, capture_output=True)


def study_table(data: Path) -> pd.DataFrame:
    """The clips of the CV, with their fold, exactly as ``bench/small_data.py`` makes them."""
    from echoengine import catalog, splits
    from echoengine.config import EchoConfig

    table, _ = catalog.scan(catalog.load_catalog(data), EchoConfig().audio)
    folds = splits.kfold(table, folds=5, seed=0, sparse_classes="drop")
    table = table[folds >= 0].reset_index(drop=True)
    table["fold"] = folds[folds >= 0]
    return table


def store_clip(path: str, target: Path, kbps: int) -> tuple[float, str]:
    """Decode, resample and pad one file as echoengine does, store it; its gain and zero runs."""
    from echoengine import audio
    from echoengine.clips import pad_to_length
    from echoengine.config import EchoConfig

    y = audio.load(path, EchoConfig().audio, duration=CLIP_SAMPLES / SAMPLE_RATE)
    y = pad_to_length(y, length=CLIP_SAMPLES, where="end")[:CLIP_SAMPLES]
    peak = float(np.abs(y).max())
    gain = 0.9 / peak if peak > 0 else 1.0  # peak-normalised for the codec, the level restored at load time
    encode_opus(y * gain, target, kbps=kbps)
    return gain, ";".join(f"{a}-{b}" for a, b in zero_runs(y))


def prepare(pack: Path, data: Path, kbps: int) -> None:
    """Write the pack: the tflite file, the clips as Opus, ``clips.csv`` and a README."""
    from echoengine.models.embedders import birdnet_files

    started = time.perf_counter()
    table = study_table(data)
    (pack / "audio").mkdir(parents=True, exist_ok=True)
    model, _ = birdnet_files()
    shutil.copy2(model, pack / model.name)
    names = [f"audio/{i:04d}.opus" for i in range(len(table))]
    with ThreadPoolExecutor(4) as pool:
        stored = list(pool.map(lambda a: store_clip(a[0], pack / a[1], kbps), zip(table["path"], names)))
    clips = pd.DataFrame({"file": [Path(p).name for p in table["path"]], "audio": names, "label": table["label"],
                          "group": table["group"], "fold": table["fold"],
                          "gain": [g for g, _ in stored], "zeros": [z for _, z in stored]})
    clips.to_csv(pack / "clips.csv", index=False)
    meta = {"model": model.name, "sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES, "opus_kbps": kbps,
            "clips": len(clips), "classes": int(clips["label"].nunique()), "data": str(data)}
    (pack / "pack.json").write_text(json.dumps(meta, indent=1))
    (pack / "README.txt").write_text(
        "Made by bench/finetune_study.py --prepare; never commit. BirdNET V2.4 model file: CC BY-NC-SA 4.0.\n"
        "ESC-50 clips: CC BY-NC (see the dataset's LICENSE). Audio: 48 kHz mono Opus, peak-normalised "
        "(divide by `gain`); `zeros` lists runs of exact zeros (start-stop samples) to restore.\n")
    size = sum(f.stat().st_size for f in pack.rglob("*") if f.is_file())
    audio_size = sum(f.stat().st_size for f in (pack / "audio").iterdir())
    print(f"pack {pack}: {len(clips)} clips, {clips['label'].nunique()} classes, {size / 1e6:.2f} MB "
          f"(audio {audio_size / 1e6:.2f} MB at {kbps} kbit/s), {time.perf_counter() - started:.0f} s")


def check_fidelity(pack: Path, data: Path, count: int) -> None:
    """Cosine similarity of the BirdNET window embeddings of stored vs original audio on ``count`` clips."""
    from echoengine import audio
    from echoengine.clips import pad_to_length
    from echoengine.config import EchoConfig
    from finetune_study import cut_windows, load_audio, load_birdnet

    clips = pd.read_csv(pack / "clips.csv", keep_default_na=False)
    rows = np.linspace(0, len(clips) - 1, count).astype(int)
    original = [pad_to_length(audio.load(data / "audio" / clips["file"][i], EchoConfig().audio,
                                          duration=5.0), length=CLIP_SAMPLES)[:CLIP_SAMPLES] for i in rows]
    stored = load_audio(pack, clips.iloc[rows].reset_index(drop=True))
    birdnet = load_birdnet(pack)
    with torch.no_grad():
        a = torch.cat([birdnet(cut_windows(torch.from_numpy(np.stack(original[i:i + 4]))))[1]
                       for i in range(0, count, 4)])
        b = torch.cat([birdnet(cut_windows(stored[i:i + 4]))[1] for i in range(0, count, 4)])
    cosine = F.cosine_similarity(a.double(), b.double()).numpy()
    print(f"stored vs original audio, {len(cosine)} windows of {count} clips: embedding cosine min "
          f"{cosine.min():.4f}, median {np.median(cosine):.4f}, mean {cosine.mean():.4f}")
