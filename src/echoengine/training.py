"""Train a classifier on a catalog and write a model bundle.

The defaults are the Echo pipeline's loop: Adam at 1e-4, cross-entropy from
logits, ReduceLROnPlateau on the validation loss (factor 0.75, patience 8,
floor 1e-7) and early stopping after 16 epochs without a better validation
loss, restoring the best weights. The options of the other seed pipelines are
in :class:`echoengine.config.TrainConfig`: AdamW / Adamax, cosine decay with a
linear warm-up, label smoothing, mixup (``augment.mixup_p``), balanced class
weights, and a frozen backbone that may be unfrozen at a later epoch.

Every epoch ends with an atomic ``checkpoint.pt`` (model, optimizer,
schedulers, random state, history), so a run killed at any moment continues
with ``resume=True`` from its last finished epoch, and ``weights.pt`` holds
the best weights so far. See :mod:`echoengine.bundle` for the folder layout.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from echoengine import ddp, syncbatch
from echoengine.bundle import save_atomic
from echoengine.cache import feature_cache
from echoengine.config import EchoConfig, TrainConfig
from echoengine.dataset import make_loader
from echoengine.embeddings import make_dataset
from echoengine.errors import EchoError
from echoengine.finetuning import finetune_advice, probe_linear, raw_embedding_head
from echoengine.headfit import train_linear_head
from echoengine.headmlp import train_mlp_head
from echoengine.kinds import IMAGES
from echoengine.layout import CHECKPOINT_FILE, BundleFiles, write_metadata
from echoengine.models import Classifier, EmbeddingClassifier, build_model
from echoengine.models.hierarchy import JointLoss, rank_masks
from echoengine.trainstate import (
    HISTORY_FIELDS,
    TrainState,
    check_resumable,
    checkpoint_stage,
    keep_epoch,
    read_checkpoint,
    start_state,
    write_history,
)

__all__ = ["HISTORY_FIELDS", "TrainResult", "balanced_class_weights", "fit", "fit_and_refit", "resolve_device"]

@dataclass
class TrainResult:
    """What :func:`fit` returns: the bundle folder, per-epoch history and the best model."""

    bundle: Path
    history: list[dict[str, float]]
    best_epoch: int
    model: Classifier


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EchoError("train.device is 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return torch.device(name)


def balanced_class_weights(targets: np.ndarray, n_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights, ``n_samples / (n_present * count)``; 1 for absent classes.

    Examples
    --------
    >>> [round(w, 3) for w in balanced_class_weights(np.array([0, 0, 0, 1]), 3).tolist()]
    [0.667, 2.0, 1.0]
    """
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(targets)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=targets)
    return torch.tensor(weights, dtype=torch.float32)


def _optimizer(model: Classifier, train: TrainConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": list(model.head.parameters()), "lr": train.learning_rate},
        {"params": list(model.backbone.parameters()), "lr": train.learning_rate * train.backbone_lr_factor},
    ]
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}
    return optimizers[train.optimizer](groups, weight_decay=train.weight_decay)


class _Schedule:
    """Warm-up, then cosine decay or ReduceLROnPlateau, stepped once per epoch."""

    def __init__(self, optimizer: torch.optim.Optimizer, train: TrainConfig) -> None:
        from torch.optim import lr_scheduler

        self.warmup_epochs = train.warmup_epochs
        self.warmup = None
        if train.warmup_epochs:
            self.warmup = lr_scheduler.LinearLR(optimizer, start_factor=1 / (train.warmup_epochs + 1),
                                                total_iters=train.warmup_epochs)
        if train.schedule == "cosine":
            self.after = lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, train.epochs - train.warmup_epochs), eta_min=train.min_lr
            )
        else:
            self.after = lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=train.lr_factor, patience=train.lr_patience, min_lr=train.min_lr
            )

    def step(self, epoch: int, val_loss: float) -> None:
        if self.warmup is not None and epoch <= self.warmup_epochs:
            self.warmup.step()
        elif isinstance(self.after, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.after.step(val_loss)
        else:
            self.after.step()

    def state_dict(self) -> dict:
        return {"warmup": self.warmup.state_dict() if self.warmup else None, "after": self.after.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])
        self.after.load_state_dict(state["after"])


def _set_backbone_frozen(model: Classifier, frozen: bool) -> None:
    if hasattr(model, "set_backbone_trainable"):  # BirdNET: maybe only its last blocks
        model.set_backbone_trainable(not frozen)
        return
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not frozen)


def _run_epoch(model, loader, loss_fn, device, *, optimizer=None, frozen_backbone=False, mixup_rng=None,
               augment=None, description="", progress=True, forward=None) -> tuple[float, float]:
    """One pass over a loader; trains when an optimizer is given. Returns (mean loss, accuracy).

    ``forward`` computes the logits (default: ``model``; the DDP wrapper of
    a run across processes, whose loss and accuracy are then those of all
    ranks together).
    """
    forward = forward or model
    training = optimizer is not None
    model.train(training)
    if training and frozen_backbone:
        model.backbone.eval()  # frozen batch-norm statistics too
    total_loss, correct, seen = 0.0, 0, 0
    multilabel = isinstance(loss_fn, MaskedBCE)
    bar = tqdm(loader, desc=description, leave=False, unit="batch", disable=not progress, file=sys.stderr)
    with torch.set_grad_enabled(training):
        for images, targets in bar:
            if len(images) < 2 and training:  # batch norm needs two examples
                continue
            images, targets = _to_device(images, device), targets.to(device)
            labels = None if multilabel else targets.argmax(1)
            if training and augment is not None and augment.mixup_p > 0 and mixup_rng.random() < augment.mixup_p:
                images, targets = syncbatch.mix(images, targets, alpha=augment.mixup_alpha, rng=mixup_rng)
            logits = forward(images)
            loss = loss_fn(logits, targets)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total_loss += float(loss.detach()) * len(images)
            if multilabel:  # the share of right yes/no answers (at 0.5) among the known labels
                known = ~torch.isnan(targets)
                hits = ((logits.detach() > 0) == (targets > 0.5)) & known
                correct += float(hits.sum()) / max(int(known.sum()), 1) * len(images)
            else:
                correct += int((logits.argmax(1) == labels).sum())
            seen += len(images)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
    total_loss, correct, seen = ddp.sum_over_ranks(total_loss, correct, seen)
    return (total_loss / seen, correct / seen) if seen else (math.nan, math.nan)


class MaskedBCE(nn.Module):
    """Binary cross-entropy from logits over the known labels only (NaN targets are left out).

    Label smoothing moves targets toward 0.5 by ``smoothing / 2``. With
    ``whole_batch``, in a training step across processes, each rank's sum is
    divided by the known labels of the whole batch (over the processes), so
    that the ranks' mean (DDP's) is one process's loss on the whole batch.

    Examples
    --------
    >>> loss = MaskedBCE()(torch.tensor([[0.0, 5.0]]), torch.tensor([[float("nan"), 1.0]]))
    >>> round(float(loss), 4)
    0.0067
    """

    def __init__(self, *, smoothing: float = 0.0, whole_batch: bool = False) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.whole_batch = whole_batch

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(targets)
        clean = torch.where(known, targets, torch.zeros_like(targets))
        clean = clean * (1 - self.smoothing) + self.smoothing / 2
        losses = nn.functional.binary_cross_entropy_with_logits(logits, clean, reduction="none")
        if self.whole_batch and ddp.world() > 1:
            return (losses * known).sum() / (syncbatch.summed(known.sum()).clamp_min(1) / ddp.world())
        return (losses * known).sum() / known.sum().clamp_min(1)


def _to_device(inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Images go channels-last: 1.26x faster convolutions on a CPU (EfficientNetV2-B0 training, 2 cores)."""
    if inputs.ndim == 4:
        return inputs.to(device, memory_format=torch.channels_last)
    return inputs.to(device)


@dataclass
class _Run:
    """What the epochs of one run work with: data, model, optimizer, schedule and losses."""

    device: torch.device
    train_size: int
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    model: Classifier
    optimizer: torch.optim.Optimizer
    schedule: _Schedule
    train_loss_fn: nn.Module
    val_loss_fn: nn.Module
    net: nn.Module  # what trains: the model, or its DDP wrapper in a run across processes


def _board(bundle: Path, keep: str, start_epoch: int):
    """The run's TensorBoard writer (rank 0 alone writes; a refit writes into ``tensorboard/refit``)."""
    from torch.utils.tensorboard import SummaryWriter

    if not ddp.is_main():
        return _NoBoard()
    return SummaryWriter(BundleFiles(bundle).tensorboard / ("refit" if keep == "last" else ""), purge_step=start_epoch)


def fit(
    train_table: pd.DataFrame,
    val_table: pd.DataFrame,
    classes: list[str],
    config: EchoConfig,
    bundle: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log=print,
    keep: str = "best",
    boxes: pd.DataFrame | None = None,
    memberships: Sequence[np.ndarray] = (),
) -> TrainResult:
    """Train on ``train_table``, select on ``val_table``, and write the bundle.

    Parameters
    ----------
    train_table, val_table : pandas.DataFrame
        Scanned catalogs (see :func:`echoengine.catalog.scan`).
    classes : list of str
        Output order.
    config : EchoConfig
    bundle : str or Path
        Folder to write; created if needed.
    resume : bool
        Continue from the bundle's ``checkpoint.pt`` (its config must match,
        apart from ``train.epochs`` and data loading settings).
    progress : bool
        Show a progress bar per epoch.
    log : callable
        Receives one line per epoch.
    keep : {"best", "last"}
        Keep the weights of the epoch with the lowest validation loss (with
        early stopping), or those of the last epoch (no early stopping).
    boxes : DataFrame, optional
        Multi-label training (``model.multilabel``): the annotated boxes of
        the recordings in the tables (:func:`echoengine.catalog.read_annotations`).
    memberships : sequence of np.ndarray
        A joint model's ranks (:class:`echoengine.models.hierarchy.JointLoss`).
    """
    bundle = Path(bundle)
    device, checkpoint = _open_bundle(val_table, classes, config, bundle, resume=resume)
    run = _prepare_run(train_table, val_table, classes, config, bundle, device=device, probe=checkpoint is None,
                       keep=keep, progress=progress, log=log, boxes=boxes, memberships=memberships)
    state = start_state(checkpoint, bundle, run.model, run.optimizer, run.schedule, device=device, train=config.train,
                        log=log)
    with _board(bundle, keep, state.start_epoch) as board:
        for epoch in range(state.start_epoch, config.train.epochs + 1):
            row = _train_epoch(run, config, epoch, progress=progress)
            _log_board(board, row)
            improved = keep_epoch(state, row, run.model, run.optimizer, run.schedule, bundle, keep=keep)
            log(_epoch_line(row, config, refit=keep == "last", improved=improved))
            if keep == "best" and epoch - state.best_epoch >= config.train.patience:
                log(f"early stop: no better validation loss since epoch {state.best_epoch}")
                break
    _finish(state, run.model, bundle, config.train, keep=keep, log=log)
    return TrainResult(bundle, state.history, state.best_epoch, syncbatch.revert(run.model).eval())


def _open_bundle(val_table: pd.DataFrame, classes: list[str], config: EchoConfig, bundle: Path, *,
                 resume: bool) -> tuple[torch.device, dict | None]:
    """Check the run can start, read the checkpoint to resume, write the metadata and seed torch."""
    if len(val_table) == 0:
        raise EchoError("no validation files: early stopping and the best checkpoint need some; add recordings "
                        "(3 per class give one to each part) or raise data.val_fraction")
    device = resolve_device(config.train.device)
    checkpoint = None
    if resume:
        if not BundleFiles(bundle).checkpoint.is_file():
            raise EchoError(f"{bundle}: nothing to resume ({CHECKPOINT_FILE} not found)")
        check_resumable(bundle, config)
        checkpoint = read_checkpoint(bundle)
    if ddp.is_main():
        write_metadata(bundle, config, classes)
    torch.manual_seed(config.train.seed)
    return device, checkpoint


def _prepare_run(train_table: pd.DataFrame, val_table: pd.DataFrame, classes: list[str], config: EchoConfig,
                 bundle: Path, *, device: torch.device, probe: bool, keep: str, progress: bool,
                 log: Callable[[str], None], boxes: pd.DataFrame | None,
                 memberships: Sequence[np.ndarray] = ()) -> _Run:
    """Datasets and loaders, the model (its head probed first when ``probe``), optimizer, schedule, losses."""
    train = config.train
    cache = feature_cache(config)
    if config.model.multilabel != (boxes is not None):
        raise EchoError("multi-label training needs annotated boxes and model.multilabel = true, together")
    with ddp.main_first():  # embeddings computed once, by rank 0, into the cache the others then read
        train_data = make_dataset(train_table, classes, config, train=True, cache=cache, progress=progress,
                                  boxes=boxes)
        val_data = make_dataset(val_table, classes, config, train=False, cache=cache, progress=progress, boxes=boxes,
                                clips=True)  # validated on the clips it trains on
    shard = (ddp.rank(), ddp.world())
    train_loader = make_loader(train_data, config, shard=shard)
    if config.model.kind.finetunes and not train.freeze_backbone:
        windows = len(train_data) * math.ceil(config.audio.clip_seconds / 3) * train.epochs  # 1.3 s each on 2 cores
        log(finetune_advice(len(train_data), len(classes), cpu_hours=windows * 1.3 / 3600 if device.type == "cpu"
                            else None))
    val_loader = make_loader(val_data, config, shard=shard)
    model = build_model(config.model, len(classes)).to(device, memory_format=torch.channels_last)
    model = syncbatch.convert(model, device)  # across processes: batch norm, dropout as one process's
    if isinstance(model, EmbeddingClassifier):
        model.set_standardisation(torch.from_numpy(train_data.all_embeddings()).to(device))
    if train.probe_epochs and probe and config.model.kind.finetunes:
        head = _probe_head(train_table, val_table, classes, config, BundleFiles(bundle).probe, keep=keep,
                           log=log)
        model.head.load_state_dict(head.state_dict())
    optimizer = _optimizer(model, train)
    schedule = _Schedule(optimizer, train)
    train_loss_fn, val_loss_fn = _loss_functions(config, train_data.targets, len(classes), device, memberships)
    net = ddp.wrap(model, device, freezing=train.freeze_backbone)
    return _Run(device, len(train_data), train_loader, val_loader, model, optimizer, schedule, train_loss_fn,
                val_loss_fn, net)


def _loss_functions(config: EchoConfig, targets: list, n_classes: int, device: torch.device,
                    memberships: Sequence[np.ndarray] = ()) -> tuple[nn.Module, nn.Module]:
    """The training loss (balanced class weights where asked) and the unweighted validation loss (with
    ``memberships``, both with a term at every rank of the taxonomy)."""
    train = config.train
    if config.model.multilabel:  # validation batches are each rank's own: no sum over the ranks
        return MaskedBCE(smoothing=train.label_smoothing, whole_batch=True), MaskedBCE(smoothing=train.label_smoothing)
    weights = None
    if train.class_weights == "balanced":
        weights = balanced_class_weights(np.array(targets), n_classes).to(device)
    if memberships:
        masks = rank_masks(memberships)
        return (JointLoss(masks, weight=weights, label_smoothing=train.label_smoothing),
                JointLoss(masks, label_smoothing=train.label_smoothing))
    return (torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=train.label_smoothing),
            torch.nn.CrossEntropyLoss(label_smoothing=train.label_smoothing))


def _train_epoch(run: _Run, config: EchoConfig, epoch: int, *, progress: bool) -> dict[str, float]:
    """One epoch of training, then validation and the schedule's step; returns its history row."""
    train = config.train
    frozen = train.freeze_backbone and not (train.unfreeze_epoch and epoch >= train.unfreeze_epoch)
    _set_backbone_frozen(run.model, frozen)
    (run.train_loader.batch_sampler if ddp.world() > 1 else run.train_loader.sampler).set_epoch(epoch - 1)
    learning_rate = run.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    train_loss, train_acc = _run_epoch(
        run.model, run.train_loader, run.train_loss_fn, run.device, optimizer=run.optimizer, frozen_backbone=frozen,
        mixup_rng=np.random.default_rng([train.seed, epoch]), augment=config.augment,
        description=f"epoch {epoch}/{train.epochs}", progress=progress, forward=run.net,
    )
    seconds = time.perf_counter() - started
    val_loss, val_acc = _run_epoch(run.model, run.val_loader, run.val_loss_fn, run.device, description="validation",
                                   progress=progress)
    run.schedule.step(epoch, val_loss)
    return {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
            "val_accuracy": val_acc, "learning_rate": learning_rate, "seconds": round(seconds, 3),
            "images_per_second": round(run.train_size / seconds, 2)}


def _log_board(board, row: dict[str, float]) -> None:
    """An epoch's losses, accuracies and learning rate to TensorBoard."""
    epoch = row["epoch"]
    for part in ("train", "val"):  # one writer: purge_step then also drops the epochs of a killed run
        board.add_scalar(f"loss/{part}", row[f"{part}_loss"], epoch)
        board.add_scalar(f"accuracy/{part}", row[f"{part}_accuracy"], epoch)
    board.add_scalar("learning_rate", row["learning_rate"], epoch)


def _finish(state: TrainState, model: Classifier, bundle: Path, train: TrainConfig, *, keep: str,
            log: Callable[[str], None]) -> None:
    """The end-of-training warnings, and the kept weights loaded into the model."""
    if keep == "best" and state.best_epoch == train.epochs > state.start_epoch - 1:
        log(f"warning: the validation loss was still falling at the last epoch ({train.epochs}): the model may "
            "gain from more (--epochs)")
    if state.best_epoch == 0:  # no finite validation loss (every validation file failed to load)
        log("warning: no epoch had a finite validation loss; the bundle keeps the last weights")
        state.best_state = copy.deepcopy(model.state_dict())
        if ddp.is_main():
            save_atomic(state.best_state, BundleFiles(bundle).weights)
    model.load_state_dict(state.best_state)


class _NoBoard:
    """The TensorBoard writer of ranks other than 0 in a run across processes: writes nothing."""

    def __enter__(self) -> _NoBoard:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_scalar(self, *args, **kwargs) -> None:
        return None


def _epoch_line(row: dict[str, float], config: EchoConfig, *, refit: bool, improved: bool) -> str:
    """One epoch in one line. A refit trains on its validation part, so it is not scored there."""
    unit = "images/s" if config.model.kind.input == IMAGES else "clips/s"
    validation = ("" if refit else f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}")
    marker = " *" if improved and not refit else ""
    return (f"epoch {row['epoch']}: loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}{validation} | "
            f"lr {row['learning_rate']:.2e} | {row['images_per_second']:.1f} {unit}{marker}")


def _probe_head(train_table: pd.DataFrame, val_table: pd.DataFrame, classes: list[str], config: EchoConfig,
                bundle: Path, *, keep: str, log) -> nn.Module:
    """Linear probing before fine-tuning: BirdNET's head trained on its frozen, cached embeddings.

    Returns a head for raw embeddings: the probe's standardisation is folded
    into its first linear layer. A refit (``keep="last"``) probes for the
    epochs the selection run's probe chose.
    """
    if config.model.head_name == "linear":
        return probe_linear(train_table, classes, config, log=log)
    epochs = config.train.probe_epochs
    history_file = BundleFiles(bundle).history
    if keep == "last" and history_file.is_file():
        history = pd.read_csv(history_file)
        epochs = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    probe_config = config.replace(
        model={"embedder": config.model.kind.probe_embedder, "backbone": config.model.backbone},
        train={"epochs": epochs, "patience": min(config.train.patience, 10), "learning_rate": 1e-3,
               "optimizer": "adam", "schedule": "plateau", "warmup_epochs": 0, "freeze_backbone": False,
               "unfreeze_epoch": 0, "refit": False, "probe_epochs": 0},
    )
    log(f"linear probing: the head on frozen BirdNET embeddings, up to {epochs} epochs ({bundle})")
    result = fit(train_table, val_table, classes, probe_config, bundle, progress=False, keep=keep,
                 log=lambda line: None)
    best = result.history[result.best_epoch - 1]
    log(f"linear probing: epoch {result.best_epoch} kept, val loss {best['val_loss']:.4f} "
        f"acc {best['val_accuracy']:.3f}")
    probe = result.model
    return raw_embedding_head(probe)


def _fit_linear_head(table: pd.DataFrame, classes: list[str], config: EchoConfig, bundle: Path, *,
                     progress: bool, log, boxes: pd.DataFrame | None = None,
                     memberships: Sequence[np.ndarray] = ()) -> TrainResult:
    """A linear (:mod:`echoengine.headfit`) or MLP (:mod:`echoengine.headmlp`) head on frozen embeddings, fitted
    full-batch with inner-CV selection and written as a bundle (multi-label with ``boxes``).

    ``history.csv`` gets one row: the loss and accuracy on the training clips,
    and as validation scores those of the inner cross-validation's held-out
    recordings at the chosen settings.
    """
    files = BundleFiles(bundle)
    files.checkpoint.unlink(missing_ok=True)
    cache = feature_cache(config)
    started = time.perf_counter()
    if config.model.head_name == "mlp":
        if memberships:
            raise EchoError("--hierarchy joint trains a linear head on embeddings (or any epoch-trained model), not "
                            "the mlp head: use --head linear, or --hierarchy per-node or flat")
        model, fit = train_mlp_head(table, classes, config, cache=cache, progress=progress, boxes=boxes)
    else:
        model, fit = train_linear_head(table, classes, config, cache=cache, progress=progress, boxes=boxes,
                                       memberships=memberships)
    write_metadata(bundle, fit.config or config, classes)  # an MLP's chosen size: the bundle must build it
    save_atomic(model.state_dict(), files.weights)
    inner = min(fit.inner_scores.values()) if fit.inner_scores else math.nan
    seconds = time.perf_counter() - started
    history = [{"epoch": 1, "train_loss": fit.train_loss, "train_accuracy": fit.train_accuracy, "val_loss": inner,
                "val_accuracy": fit.inner_accuracy, "learning_rate": math.nan, "seconds": round(seconds, 3),
                "images_per_second": round(len(table) / seconds, 2)}]
    write_history(files.history, history)
    log(f"{fit.method} on {len(table)} files in {seconds:.1f} s: {fit.describe()}")
    return TrainResult(bundle, history, 1, model)


def fit_and_refit(train_table: pd.DataFrame, val_table: pd.DataFrame, classes: list[str], config: EchoConfig,
                  bundle: str | Path, *, resume: bool = False, progress: bool = True, log=print,
                  boxes: pd.DataFrame | None = None, memberships: Sequence[np.ndarray] = ()) -> TrainResult:
    """:func:`fit`, then, with ``train.refit``, train again on both parts for the chosen number of epochs.

    The selection run's history is kept as ``selection_history.csv``; the
    bundle's config then describes the refit (its ``epochs`` are the chosen
    ones) and ``weights.pt`` holds the refit's last weights. A resumed run
    continues whichever stage its checkpoint was in. ``memberships``: a joint model's ranks (:func:`fit`).
    """
    bundle = Path(bundle)
    both = pd.concat([train_table, val_table])
    if config.convex_head():  # fitted in seconds on all of it: nothing to select on or resume
        return _fit_linear_head(both, classes, config, bundle, progress=progress, log=log, boxes=boxes,
                                memberships=memberships)
    files = BundleFiles(bundle)
    selection = files.selection_history
    stage = checkpoint_stage(bundle) if resume else None
    if stage == "last":  # killed during the refit: continue it with its own config
        saved = EchoConfig.load(files.config)
        saved = saved.with_machine_settings(config)
        return fit(both, val_table, classes, saved, bundle, resume=True, progress=progress, log=log, keep="last",
                   boxes=boxes, memberships=memberships)
    if resume and stage is None and selection.is_file():  # killed before the refit's first epoch
        history = pd.read_csv(selection)
        best_epoch = int(history.loc[history["val_loss"].idxmin(), "epoch"])
        config = EchoConfig.load(files.config).with_machine_settings(config)
    else:
        if not resume and ddp.is_main():
            selection.unlink(missing_ok=True)
        result = fit(train_table, val_table, classes, config, bundle, resume=resume, progress=progress, log=log,
                     boxes=boxes, memberships=memberships)
        if not config.train.refit:
            return result
        best_epoch = result.best_epoch
        # the selection checkpoint goes first: a kill never leaves it beside the selection history
        if ddp.is_main():
            files.checkpoint.unlink(missing_ok=True)
            os.replace(files.history, selection)
        ddp.barrier()
    epochs = max(best_epoch, 1)
    log(f"refit: training again on {len(both)} files (train + validation) for {epochs} epochs")
    refit_config = config.replace(train={"epochs": epochs, "patience": epochs,
                                         "warmup_epochs": min(config.train.warmup_epochs, epochs - 1)})
    refitted = fit(both, val_table, classes, refit_config, bundle, progress=progress, log=log, keep="last",
                   boxes=boxes, memberships=memberships)
    return TrainResult(bundle, refitted.history, best_epoch, refitted.model)
