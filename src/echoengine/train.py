"""Train a classifier on a catalog and write a model bundle.

The loop is the Echo pipeline's: Adam at 1e-4, cross-entropy from logits,
ReduceLROnPlateau (factor 0.75, patience 8, floor 1e-7) and early stopping
after 16 epochs without a better validation loss, restoring the best weights.
The bundle is a folder that everything downstream loads::

    BUNDLE/
      echoengine.toml   the full config, front end included
      classes.txt       one label per line, in output order
      weights.pt        the best state_dict (by validation loss)
      history.csv       one row per epoch
"""

from __future__ import annotations

import copy
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset, make_loader
from echoengine.models import build_model

__all__ = ["TrainResult", "fit", "save_atomic"]

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"]


@dataclass
class TrainResult:
    """What :func:`fit` returns: the bundle folder and the per-epoch history."""

    bundle: Path
    history: list[dict[str, float]]
    best_epoch: int


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _run_epoch(model, loader, loss_fn, device, optimizer=None, description="") -> tuple[float, float]:
    """One pass over a loader; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    model.train(optimizer is not None)
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for images, targets in tqdm(loader, desc=description, leave=False, unit="batch"):
            if len(images) < 2 and optimizer is not None:  # batch norm needs two examples
                continue
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            loss = loss_fn(logits, targets)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total_loss += float(loss.detach()) * len(images)
            correct += int((logits.argmax(1) == targets.argmax(1)).sum())
            seen += len(images)
    return (total_loss / seen, correct / seen) if seen else (math.nan, math.nan)


def fit(train_table, val_table, classes: list[str], config: EchoConfig, bundle: str | Path) -> TrainResult:
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
    """
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.train.seed)
    device = _device(config.train.device)
    cache = FeatureCache(config.data.cache_dir, config) if config.data.cache_dir else None
    train_loader = make_loader(ClipDataset(train_table, classes, config, train=True, cache=cache), config)
    val_loader = make_loader(ClipDataset(val_table, classes, config, train=False, cache=cache), config)
    model = build_model(config.model, len(classes)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.train.lr_factor, patience=config.train.lr_patience, min_lr=config.train.min_lr
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    config.save(bundle / "echoengine.toml")
    (bundle / "classes.txt").write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    history: list[dict[str, float]] = []
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    with open(bundle / "history.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for epoch in range(1, config.train.epochs + 1):
            train_loss, train_acc = _run_epoch(model, train_loader, loss_fn, device, optimizer, f"epoch {epoch}")
            val_loss, val_acc = _run_epoch(model, val_loader, loss_fn, device, description="validation")
            scheduler.step(val_loss)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                   "val_accuracy": val_acc, "learning_rate": optimizer.param_groups[0]["lr"]}
            history.append(row)
            writer.writerow(row)
            file.flush()
            print(f"epoch {epoch}: loss {train_loss:.4f} acc {train_acc:.3f} | "
                  f"val loss {val_loss:.4f} acc {val_acc:.3f}", flush=True)
            if val_loss < best_loss:
                best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
                save_atomic(best_state, bundle / "weights.pt")
            elif epoch - best_epoch >= config.train.patience:
                print(f"early stop: no better validation loss since epoch {best_epoch}", flush=True)
                break
    model.load_state_dict(best_state)
    return TrainResult(bundle, history, best_epoch)
