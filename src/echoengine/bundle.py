"""The model bundle: one folder that everything downstream of training loads.

::

    BUNDLE/
      echoengine.toml   the full config (front end included), so a model always
                        runs with the front end it was trained with
      classes.txt       one label per line, in output order
      weights.pt        the best state_dict (by validation loss; the last epoch's after a refit)
      checkpoint.pt     the last epoch's full training state (for --resume)
      history.csv       one row per epoch
      splits.csv        which file went to train / val / test
      metrics.json      evaluation on held-out data
      plots/            training curves, confusion matrix
      tensorboard/      TensorBoard event files

A cross-validation folder holds one bundle per fold (``fold0/``, ``fold1/``,
...); loaded together they are an ensemble that averages probabilities.

Examples
--------
>>> import tempfile
>>> from echoengine.config import EchoConfig
>>> folder = write_metadata(tempfile.mkdtemp(), EchoConfig(), ["frog", "owl"])
>>> read_classes(folder)
['frog', 'owl']
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.models import Classifier, build_model

__all__ = ["Bundle", "find_bundles", "load_bundle", "read_classes", "save_atomic", "selection_history",
           "weights_digest", "write_metadata"]

CONFIG_FILE = "echoengine.toml"
CLASSES_FILE = "classes.txt"
WEIGHTS_FILE = "weights.pt"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Bundle:
    """A loaded bundle: its folder, config, class names and model (in eval mode)."""

    path: Path
    config: EchoConfig
    classes: list[str]
    model: Classifier


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves half a file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def write_metadata(folder: str | Path, config: EchoConfig, classes: list[str]) -> Path:
    """Create ``folder`` and write its config (without this machine's settings) and class list."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.portable().save(folder / CONFIG_FILE)
    (folder / CLASSES_FILE).write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")
    return folder


def weights_digest(folder: str | Path) -> str:
    """A short hash of a bundle's ``weights.pt``: files derived from the weights record it.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / WEIGHTS_FILE).write_bytes(b"weights")
    >>> weights_digest(folder)
    '8eaa55a578eb0f70'
    """
    with open(Path(folder) / WEIGHTS_FILE, "rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=8)).hexdigest()


def read_classes(folder: str | Path) -> list[str]:
    """The class names of a bundle, in output order."""
    return [line for line in (Path(folder) / CLASSES_FILE).read_text(encoding="utf-8").splitlines() if line]


def selection_history(folder: str | Path) -> Path:
    """The history whose validation scores chose the weights: the selection run's after a refit."""
    folder = Path(folder)
    selection = folder / "selection_history.csv"
    return selection if selection.is_file() else folder / "history.csv"


def load_bundle(folder: str | Path, *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by :func:`echoengine.train.fit`.

    Raises
    ------
    EchoError
        The folder is not a complete bundle.
    """
    folder = Path(folder)
    missing = [name for name in (CONFIG_FILE, CLASSES_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise EchoError(f"{folder}: not a model bundle (missing {', '.join(missing)})")
    config = EchoConfig.load(folder / CONFIG_FILE).portable()  # the cache, workers and device are the reader's
    classes = read_classes(folder)
    # the architecture only: the weights come from the bundle, never from a download
    model = build_model(dataclasses.replace(config.model, pretrained=False), len(classes))
    try:
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        detail = " ".join(str(exc).split())[:400]  # one line
        raise EchoError(f"{folder / WEIGHTS_FILE}: cannot load the weights ({detail})") from None
    return Bundle(folder, config, classes, model.to(device, memory_format=torch.channels_last).eval())


def find_bundles(folder: str | Path) -> list[Path]:
    """The bundle folders at ``folder``: itself, or the fold bundles of a CV folder.

    Raises
    ------
    EchoError
        Neither a bundle nor a folder of bundles.
    """
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        return [folder]
    members = sorted(p.parent for p in folder.glob(f"fold*/{WEIGHTS_FILE}") if (p.parent / "metrics.json").is_file())
    if not members:
        raise EchoError(f"{folder}: neither a model bundle nor a cross-validation folder of finished fold bundles")
    return members
