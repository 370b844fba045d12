"""Training throughput: echoengine's cached pipeline against the Echo notebook's uncached one.

Usage::

    python bench/train_throughput.py --data ../shared/data/esc50-subset [--files 96] [--backbones a,b]

For each backbone, the same model (channels-last, as TensorFlow and
:func:`echoengine.training.fit` run it), optimizer (Adam) and batch size (16) are
fed by three pipelines, one after the other, and the table gives training
images per second over one epoch of ``--files`` files:

* **echo (uncached)**: a re-creation of the Project Echo notebook's input
  pipeline: per sample ``librosa.load(sr=48000)``, a random 5 s subsection
  (silence padding), the audiomentations of the Echo defaults,
  ``librosa.feature.melspectrogram`` + ``power_to_db``, a resize to 260 x 260,
  min-max scaling and three channels; computed again every epoch.
* **echoengine, cold cache**: the first epoch, which computes every variant
  (range decode, soxr, torch front end) and stores it.
* **echoengine, warm cache**: a later epoch whose variants are all in the
  cache (the steady state once each file's ``augment.variants`` variants have
  been drawn once).

The ratio column is images/s against the uncached Echo pipeline; the target
is a warm ratio of at least 3 on this machine. The cache lives in a temporary
folder removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from echoengine import catalog, runtime
from echoengine.augment import WaveformAugmenter
from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset, make_loader
from echoengine.models import build_model


class EchoNotebookDataset(Dataset):
    """The Echo notebook's per-sample librosa pipeline, recomputed every time (no cache)."""

    def __init__(self, table, classes, config: EchoConfig, seed: int = 0) -> None:
        self.paths, self.config = table["path"].tolist(), config
        self.targets = [classes.index(label) for label in table["label"]]
        self.n_classes = len(classes)
        self.augmenter = WaveformAugmenter(config.augment, sample_rate=config.audio.sample_rate)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        fe, rate = self.config.frontend, self.config.audio.sample_rate
        y, _ = librosa.load(self.paths[index], sr=rate, mono=True)
        length = self.config.audio.clip_samples
        if len(y) > length:
            start = int(self.rng.integers(0, len(y) - length + 1))
            y = y[start : start + length]
        y = np.pad(y, (0, length - len(y)))
        y = self.augmenter(y.astype(np.float32), seed=int(self.rng.integers(2**62)))
        mel = librosa.feature.melspectrogram(y=y, sr=rate, n_fft=fe.n_fft, hop_length=fe.hop_length,
                                             n_mels=fe.n_mels, fmin=fe.fmin, fmax=fe.fmax)
        image = torch.from_numpy(librosa.power_to_db(mel, ref=1.0, top_db=fe.top_db)).T[None, None]
        image = torch.nn.functional.interpolate(image, size=(fe.image_height, fe.image_width), mode="bicubic")[0, 0]
        image = (image - image.min()) / (image.max() - image.min() + 1e-12)
        target = torch.zeros(self.n_classes)
        target[self.targets[index]] = 1.0
        return image.expand(3, -1, -1), target


def train_epoch(model, optimizer, loader) -> float:
    """Images per second of one training epoch (data loading included)."""
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, time.perf_counter()
    for images, targets in loader:
        loss = loss_fn(model(images.contiguous(memory_format=torch.channels_last)), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.perf_counter() - start)


def bench(table, classes, config: EchoConfig, backbone: str) -> dict[str, float]:
    config = config.replace(model={"backbone": backbone})
    torch.manual_seed(0)
    model = build_model(config.model, len(classes)).to(memory_format=torch.channels_last)  # as TF and fit() run
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = config.data.batch_size
    warm_up = [(torch.rand(batch, 3, 260, 260), torch.eye(len(classes))[torch.arange(batch) % len(classes)])] * 2
    train_epoch(model, optimizer, warm_up)  # untimed: first calls allocate
    rates = {"echo (uncached)": train_epoch(
        model, optimizer, DataLoader(EchoNotebookDataset(table, classes, config), batch_size=batch, shuffle=True))}
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(folder, config)
        loader = make_loader(ClipDataset(table, classes, config, train=True, cache=cache), config)
        loader.sampler.set_epoch(0)
        rates["echoengine, cold cache"] = train_epoch(model, optimizer, loader)
        loader.sampler.set_epoch(0)  # the same variants again: all cached
        rates["echoengine, warm cache"] = train_epoch(model, optimizer, loader)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/esc50-subset")
    parser.add_argument("--files", type=int, default=96)
    parser.add_argument("--backbones", default="small_cnn,efficientnetv2_b0")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"real data not found at {args.data}; pass --data")
    runtime.keep_freed_memory()
    config = EchoConfig()  # the Echo defaults: 48 kHz, 5 s, 260 mels, 260 x 260 x 3, batch 16
    table, _ = catalog.scan(catalog.load_catalog(args.data, config.data), config.audio)
    table = table.sample(n=min(args.files, len(table)), random_state=0).reset_index(drop=True)
    classes = catalog.class_names(table)
    print(f"{len(table)} files of {args.data}, batch {config.data.batch_size}, {torch.get_num_threads()} threads")
    print(f"\n{'backbone':<20} {'pipeline':<24} {'images/s':>9} {'vs echo':>8}")
    for backbone in args.backbones.split(","):
        rates = bench(table, classes, config, backbone)
        base = rates["echo (uncached)"]
        for name, rate in rates.items():
            print(f"{backbone:<20} {name:<24} {rate:>9.1f} {rate / base:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
