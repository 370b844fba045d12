"""Where a training run stands, kept in its bundle so that a killed run resumes where it was.

Every epoch rewrites ``history.csv`` and an atomic ``checkpoint.pt`` (model,
optimizer, schedules, random state, history, best epoch), and ``weights.pt``
when the epoch is the best so far. A resumed run checks its config against
the bundle's, reads the checkpoint back without running code, and puts its
state back. See :mod:`echoengine.bundle` for the folder layout.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from echoengine import ddp
from echoengine.bundle import load_state, save_atomic
from echoengine.config import MACHINE_SETTINGS, EchoConfig, TrainConfig
from echoengine.errors import EchoError
from echoengine.files import write_atomic
from echoengine.layout import CONFIG_FILE, BundleFiles

__all__ = ["HISTORY_FIELDS", "TrainState", "check_resumable", "checkpoint_stage", "keep_epoch", "read_checkpoint",
           "start_state", "write_history"]

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate",
                  "seconds", "images_per_second"]

# Settings that may differ between a run and its resumption.
_RESUMABLE_CHANGES = ("train.epochs", *MACHINE_SETTINGS)

_CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "schedule", "torch_rng", "history", "best_loss", "best_epoch")


class _Stateful(Protocol):
    """What a checkpoint saves and puts back: an object with a state dict (a schedule)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainState:
    """Where training stands: its history, best validation loss and epoch, best weights, first epoch to run."""

    history: list[dict[str, float]]
    best_loss: float
    best_epoch: int
    start_epoch: int
    best_state: dict | None = None


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """Write ``history.csv`` whole: one row per epoch, the :data:`HISTORY_FIELDS` columns."""

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(history)

    write_atomic(path, write)


def check_resumable(bundle: Path, config: EchoConfig) -> None:
    """Refuse to resume with a config that differs from the run's in more than the resumable settings."""
    saved = EchoConfig.load(BundleFiles(bundle).config)
    if saved.fingerprint(ignore=_RESUMABLE_CHANGES) != config.fingerprint(ignore=_RESUMABLE_CHANGES):
        raise EchoError(f"{bundle}: cannot resume with a different config than the run's ({CONFIG_FILE}); "
                        "only train.epochs, train.device and data loading settings may change")
    if config.train.schedule == "cosine" and config.train.epochs != saved.train.epochs:
        raise EchoError(f"{bundle}: the cosine schedule was laid out for {saved.train.epochs} epochs; "
                        f"resume with --epochs {saved.train.epochs}")


def read_checkpoint(bundle: Path) -> dict:
    """The bundle's ``checkpoint.pt``, read without running code and checked to hold a whole training state."""
    path = BundleFiles(bundle).checkpoint
    checkpoint = load_state(path, what="the checkpoint")
    if (not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _CHECKPOINT_KEYS)
            or checkpoint.get("keep", "best") not in ("best", "last")):
        raise EchoError(f"{path}: not a whole echoengine checkpoint; start again with --overwrite")
    return checkpoint


def _restore(checkpoint: dict, bundle: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             schedule: _Stateful) -> tuple[list[dict[str, float]], float, int]:
    """Put a checkpoint's state back; returns its history, best validation loss and best epoch."""
    files = BundleFiles(bundle)
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        torch.set_rng_state(checkpoint["torch_rng"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise EchoError(f"{files.checkpoint}: does not fit this run ({detail}); start again with "
                        "--overwrite") from None
    if checkpoint["best_epoch"] == checkpoint["epoch"]:  # killed between the checkpoint and the weights
        save_atomic(checkpoint["model"], files.weights)
    return checkpoint["history"], checkpoint["best_loss"], checkpoint["best_epoch"]


def checkpoint_stage(bundle: Path) -> str | None:
    """What the bundle's checkpoint was training: ``"best"`` (selection), ``"last"`` (a refit) or None."""
    if not BundleFiles(bundle).checkpoint.is_file():
        return None
    return read_checkpoint(bundle).get("keep", "best")


def start_state(checkpoint: dict | None, bundle: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                schedule: _Stateful, *, device: torch.device, train: TrainConfig,
                log: Callable[[str], None]) -> TrainState:
    """A fresh start, or the checkpoint's state put back (a run that had stopped early runs no more epochs)."""
    state = TrainState([], math.inf, 0, 1)
    if checkpoint is not None:
        state.history, state.best_loss, state.best_epoch = _restore(checkpoint, bundle, model, optimizer,
                                                                    schedule)
        state.start_epoch = checkpoint["epoch"] + 1
        log(f"resuming {bundle} after epoch {checkpoint['epoch']} (best so far: epoch {state.best_epoch})")
        if checkpoint["epoch"] - state.best_epoch >= train.patience:
            log("the run had already stopped early")
            state.start_epoch = train.epochs + 1
    state.best_state = (load_state(BundleFiles(bundle).weights, map_location=device)
                        if state.best_epoch else copy.deepcopy(model.state_dict()))
    return state


def keep_epoch(state: TrainState, row: dict[str, float], model: nn.Module, optimizer: torch.optim.Optimizer,
               schedule: _Stateful, bundle: Path, *, keep: str) -> bool:
    """Record an epoch: best weights, ``history.csv``, the checkpoint, ``weights.pt``; returns whether it improved."""
    epoch, val_loss = row["epoch"], row["val_loss"]
    state.history.append(row)
    improved = val_loss < state.best_loss or keep == "last"
    if improved:
        state.best_loss, state.best_epoch = val_loss, epoch
        state.best_state = copy.deepcopy(model.state_dict())
    if not ddp.is_main():  # in a run across processes, rank 0 alone writes
        return improved
    files = BundleFiles(bundle)
    write_history(files.history, state.history)
    save_atomic({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
                 "history": state.history, "best_loss": state.best_loss, "best_epoch": state.best_epoch,
                 "keep": keep}, files.checkpoint)
    if improved:
        save_atomic(state.best_state, files.weights)
    return improved
