"""The model bundle: one folder that everything downstream of training loads.

::

    BUNDLE/
      echoengine.toml   the full config (front end included), so a model always
                        runs with the front end it was trained with; never the
                        settings of a machine (cache folder, workers, device)
      classes.txt       one label per line, in output order
      weights.pt        the best state_dict (by validation loss; the last epoch's after a refit)
      checkpoint.pt     the last epoch's full training state (for --resume)
      history.csv       one row per epoch
      selection_history.csv  after a refit: the selection run's history
      splits.csv        which file went to train / val / test
      annotations.csv   the boxes of a multi-label run
      metrics.json      evaluation on held-out data
      per_class.csv     its per-class table (multi-label: per_class_window.csv, per_class_recording.csv)
      test_predictions.csv  a fold bundle's held-out probabilities (single-label)
      plots/            training curves, confusion matrix
      tensorboard/      TensorBoard event files (the refit's in tensorboard/refit/)
      probe/            the linear probe's bundle, before fine-tuning BirdNET
      model.onnx        the exported serving graph (``echoengine export``)
      thresholds.csv    per-class detection thresholds (``echoengine calibrate``)

``model.onnx`` and ``thresholds.csv`` record the digest of the weights they
were made from (:func:`weights_digest`); readers refuse a mismatch.

A cross-validation folder holds one bundle per fold (``fold0/``, ``fold1/``,
...); loaded together they are an ensemble that averages probabilities.
Beside them: ``folds.csv``, ``cv_folds.csv``, ``metrics.json``,
``oof_predictions.csv``, ``annotations.csv`` and ``plots/`` (see
:mod:`echoengine.crossval`).

The file names are the ``*_FILE`` and ``*_DIR`` constants of this module;
:class:`BundleFiles` (``bundle.files``) and :class:`CrossValidationFiles`
give their paths, and every module names a bundle's files through them.

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
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from echoengine.config import CONFIG_FILE, EchoConfig
from echoengine.errors import EchoError
from echoengine.files import TEMPORARY_SUFFIX, write_atomic, write_text_atomic
from echoengine.models import Classifier, build_model

__all__ = ["ANNOTATIONS_FILE", "CHECKPOINT_FILE", "CLASSES_FILE", "CONFIG_FILE", "CV_FOLDS_FILE", "FOLDS_FILE",
           "HISTORY_FILE", "METRICS_FILE", "ONNX_FILE", "OOF_PREDICTIONS_FILE", "PER_CLASS_FILE", "PLOTS_DIR",
           "PROBE_DIR", "SELECTION_HISTORY_FILE", "SPLITS_FILE", "TENSORBOARD_DIR", "TEST_PREDICTIONS_FILE",
           "THRESHOLDS_FILE", "WEIGHTS_FILE", "Bundle", "BundleFiles", "CrossValidationFiles", "find_bundles",
           "load_bundle", "load_state", "prepare_output", "read_classes", "read_splits", "save_atomic",
           "selection_history", "weights_digest", "write_metadata"]

# The files of a bundle (see the layout above); every module names them by these constants.
CLASSES_FILE = "classes.txt"
WEIGHTS_FILE = "weights.pt"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.csv"
SELECTION_HISTORY_FILE = "selection_history.csv"  # the selection run's history, after a refit
SPLITS_FILE = "splits.csv"
ANNOTATIONS_FILE = "annotations.csv"  # the boxes of a multi-label run
METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
TEST_PREDICTIONS_FILE = "test_predictions.csv"  # a fold bundle's held-out probabilities
ONNX_FILE = "model.onnx"
THRESHOLDS_FILE = "thresholds.csv"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
PROBE_DIR = "probe"  # the linear probe's bundle, before fine-tuning
# ... and of a cross-validation folder
FOLDS_FILE = "folds.csv"
CV_FOLDS_FILE = "cv_folds.csv"
OOF_PREDICTIONS_FILE = "oof_predictions.csv"
_FOLD_DIR = "fold{k}"


@dataclass(frozen=True)
class BundleFiles:
    """The paths of the files of the bundle at ``folder``, whether they exist yet or not.

    Examples
    --------
    >>> files = BundleFiles(Path("frogs"))
    >>> files.weights.as_posix(), files.splits.as_posix()
    ('frogs/weights.pt', 'frogs/splits.csv')
    """

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))  # a str is welcome too

    @property
    def config(self) -> Path:
        """The full config (``echoengine.toml``)."""
        return self.folder / CONFIG_FILE

    @property
    def classes(self) -> Path:
        """The class names in output order."""
        return self.folder / CLASSES_FILE

    @property
    def weights(self) -> Path:
        """The chosen weights (``weights.pt``)."""
        return self.folder / WEIGHTS_FILE

    @property
    def checkpoint(self) -> Path:
        """The last epoch's training state."""
        return self.folder / CHECKPOINT_FILE

    @property
    def history(self) -> Path:
        """One row per epoch (``history.csv``)."""
        return self.folder / HISTORY_FILE

    @property
    def selection_history(self) -> Path:
        """The selection run's history, kept by a refit."""
        return self.folder / SELECTION_HISTORY_FILE

    @property
    def splits(self) -> Path:
        """Which file went to train / val / test."""
        return self.folder / SPLITS_FILE

    @property
    def annotations(self) -> Path:
        """A multi-label run's boxes."""
        return self.folder / ANNOTATIONS_FILE

    @property
    def metrics(self) -> Path:
        """The held-out evaluation (``metrics.json``)."""
        return self.folder / METRICS_FILE

    @property
    def thresholds(self) -> Path:
        """Per-class detection thresholds."""
        return self.folder / THRESHOLDS_FILE

    @property
    def onnx(self) -> Path:
        """The exported serving graph (``model.onnx``)."""
        return self.folder / ONNX_FILE

    @property
    def per_class(self) -> Path:
        """The single-label report's per-class table (``per_class.csv``)."""
        return self.folder / PER_CLASS_FILE

    def per_class_at(self, level: str) -> Path:
        """The multi-label report's per-class table at ``level`` (``window`` or ``recording``).

        Examples
        --------
        >>> BundleFiles(Path("frogs")).per_class_at("recording").name
        'per_class_recording.csv'
        """
        return self.folder / f"{Path(PER_CLASS_FILE).stem}_{level}.csv"

    @property
    def test_predictions(self) -> Path:
        """A fold bundle's held-out probabilities (single-label)."""
        return self.folder / TEST_PREDICTIONS_FILE

    @property
    def plots(self) -> Path:
        """The folder of the report's figures."""
        return self.folder / PLOTS_DIR

    @property
    def confusion_plot(self) -> Path:
        """The confusion matrix (single-label)."""
        return self.plots / "confusion.png"

    @property
    def training_plot(self) -> Path:
        """The training curves (single-label)."""
        return self.plots / "training.png"

    @property
    def tensorboard(self) -> Path:
        """The folder of TensorBoard event files (a refit's in its ``refit/`` folder)."""
        return self.folder / TENSORBOARD_DIR

    @property
    def probe(self) -> Path:
        """The linear probe's bundle folder, before fine-tuning."""
        return self.folder / PROBE_DIR


@dataclass(frozen=True)
class CrossValidationFiles:
    """The paths of the files of the cross-validation folder at ``folder``, whether they exist yet or not.

    Examples
    --------
    >>> files = CrossValidationFiles(Path("cv"))
    >>> files.folds.as_posix(), files.fold(2).weights.as_posix()
    ('cv/folds.csv', 'cv/fold2/weights.pt')
    """

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))  # a str is welcome too

    def fold(self, k: int) -> BundleFiles:
        """The files of fold ``k``'s bundle (``fold{k}/``)."""
        return BundleFiles(self.folder / _FOLD_DIR.format(k=k))

    @property
    def folds(self) -> Path:
        """Which file is in which fold (``folds.csv``)."""
        return self.folder / FOLDS_FILE

    @property
    def cv_folds(self) -> Path:
        """One row of metrics per fold (``cv_folds.csv``)."""
        return self.folder / CV_FOLDS_FILE

    @property
    def metrics(self) -> Path:
        """Per fold, mean and std (``metrics.json``)."""
        return self.folder / METRICS_FILE

    @property
    def oof_predictions(self) -> Path:
        """Every file's out-of-fold probabilities (single-label)."""
        return self.folder / OOF_PREDICTIONS_FILE

    @property
    def annotations(self) -> Path:
        """A multi-label cross-validation's boxes."""
        return self.folder / ANNOTATIONS_FILE

    @property
    def plots(self) -> Path:
        """The folder of the figures pooled over the folds."""
        return self.folder / PLOTS_DIR

    @property
    def confusion_plot(self) -> Path:
        """The out-of-fold confusion matrix (single-label)."""
        return self.plots / "confusion.png"

    @property
    def accuracy_plot(self) -> Path:
        """The folds' validation accuracy per epoch (single-label)."""
        return self.plots / "cv_val_accuracy.png"


@dataclass
class Bundle:
    """A loaded bundle: its folder, config, class names and model (in eval mode)."""

    path: Path
    config: EchoConfig
    classes: list[str]
    model: Classifier

    @property
    def files(self) -> BundleFiles:
        """The paths of the bundle's files (see :class:`BundleFiles`)."""
        return BundleFiles(self.path)


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves half a file.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / WEIGHTS_FILE
    >>> save_atomic({"bias": torch.zeros(2)}, path)
    >>> load_state(path)["bias"].tolist()
    [0.0, 0.0]
    """
    write_atomic(path, lambda temporary: torch.save(obj, temporary))


def load_state(path: str | Path, *, what: str = "the weights", map_location: str | torch.device = "cpu"):
    """Read a file written by :func:`save_atomic`: tensors, numbers, strings and containers, never code.

    ``torch.load(weights_only=True)`` refuses any other pickled object, so a
    crafted ``weights.pt`` or ``checkpoint.pt`` cannot run anything.

    Raises
    ------
    EchoError
        The file is missing, truncated, or holds something else: one line naming it.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        detail = " ".join(str(exc).split())[:300]  # one line
        raise EchoError(f"{path}: cannot load {what} ({detail})") from None


def write_metadata(folder: str | Path, config: EchoConfig, classes: list[str]) -> Path:
    """Create ``folder`` and write its config (without this machine's settings) and class list."""
    files = BundleFiles(folder)
    files.folder.mkdir(parents=True, exist_ok=True)
    config.portable().save(files.config)
    write_text_atomic(files.classes, "".join(f"{name}\n" for name in classes))
    return files.folder


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
    with open(BundleFiles(folder).weights, "rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=8)).hexdigest()


def read_classes(folder: str | Path) -> list[str]:
    """The class names of a bundle, in output order: the lines of its ``classes.txt``.

    Raises
    ------
    EchoError
        ``classes.txt`` is missing, unreadable, not UTF-8 text, empty or
        names a class twice (the message names the file).
    """
    path = BundleFiles(folder).classes
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EchoError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        "expected one class name per line in UTF-8, as training writes it") from None
    except OSError as exc:
        raise EchoError(f"{path}: cannot read the class list ({exc.strerror or exc})") from None
    names = [line for line in text.splitlines() if line]
    if not names:
        raise EchoError(f"{path}: lists no class; expected one class name per line, in the model's output order")
    seen: set[str] = set()
    repeated: set[str] = set()
    for name in names:
        (repeated if name in seen else seen).add(name)
    if repeated:
        raise EchoError(f"{path}: names {', '.join(map(repr, sorted(repeated)))} more than once; "
                        "expected each class once, in the model's output order")
    return names


def _check_class_count(folder: Path, classes: list[str], state) -> None:
    """Refuse a ``classes.txt`` whose length is not the number of outputs of the weights.

    Every head ends in a layer whose bias has one value per class: the last
    ``head.*.bias`` of the state dict.
    """
    if not isinstance(state, dict):
        return  # not a state dict: reported when it is loaded
    biases = [value for key, value in state.items() if key.startswith("head.") and key.endswith(".bias")]
    if not biases or getattr(biases[-1], "ndim", 0) != 1 or len(biases[-1]) == len(classes):
        return  # nothing to compare, or it matches
    raise EchoError(f"{BundleFiles(folder).classes}: lists {len(classes)} classes but {WEIGHTS_FILE} has "
                    f"{len(biases[-1])} outputs; the class list does not belong to these weights: put back the "
                    f"{CLASSES_FILE} written with them (one class per output, in output order)")


def read_splits(folder: str | Path) -> pd.DataFrame | None:
    """A bundle's ``splits.csv`` (at least ``path`` and ``part`` columns), or None when it has none.

    Raises
    ------
    EchoError
        The file is there but is not a table of files and their parts.
    """
    path = BundleFiles(folder).splits
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise EchoError(f"{path}: not a readable CSV ({' '.join(str(exc).split())[:200]})") from None
    missing = [column for column in ("path", "part") if column not in table.columns]
    if missing:
        raise EchoError(f"{path}: has no {' or '.join(missing)} column; expected the {SPLITS_FILE} training wrote")
    return table


def selection_history(folder: str | Path) -> Path:
    """The history whose validation scores chose the weights: the selection run's after a refit."""
    files = BundleFiles(folder)
    return files.selection_history if files.selection_history.is_file() else files.history


def load_bundle(folder: str | Path, *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by :func:`echoengine.training.fit`.

    Raises
    ------
    EchoError
        The folder is not a complete bundle.
    """
    folder = Path(folder)
    files = BundleFiles(folder)
    missing = [path.name for path in (files.config, files.classes, files.weights) if not path.is_file()]
    if missing:
        raise EchoError(f"{folder}: not a model bundle (missing {', '.join(missing)})")
    config = EchoConfig.load(files.config).portable()  # the cache, workers and device are the reader's
    classes = read_classes(folder)
    # the architecture only: the weights come from the bundle, never from a download
    model = build_model(dataclasses.replace(config.model, pretrained=False), len(classes))
    state = load_state(files.weights)
    if not isinstance(state, dict):
        raise EchoError(f"{files.weights}: cannot load the weights (a {type(state).__name__}, not a "
                        "state dict of tensors)")
    _check_class_count(folder, classes, state)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:400]  # one line
        raise EchoError(f"{files.weights}: cannot load the weights ({detail})") from None
    return Bundle(folder, config, classes, model.to(device, memory_format=torch.channels_last).eval())


# What training, cross-validation, evaluation, calibration and export write into a bundle or CV folder
# (checked at every depth: fold, probe and report folders hold the same kinds of files), and the files that
# show a folder is an earlier run's. Desktop litter may go with it.
_RUN_FILES = (CONFIG_FILE, CLASSES_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, HISTORY_FILE, SELECTION_HISTORY_FILE,
              SPLITS_FILE, ANNOTATIONS_FILE, METRICS_FILE, PER_CLASS_FILE, "per_class_*.csv", ONNX_FILE,
              THRESHOLDS_FILE, FOLDS_FILE, CV_FOLDS_FILE, OOF_PREDICTIONS_FILE, TEST_PREDICTIONS_FILE, PLOTS_DIR,
              "*.png", TENSORBOARD_DIR, "refit", "events.out.tfevents.*", PROBE_DIR, "fold[0-9]*", "evaluate-*",
              f"*{TEMPORARY_SUFFIX}", ".DS_Store", "._*", "Thumbs.db", "desktop.ini")
_RUN_MARKERS = (CONFIG_FILE, SPLITS_FILE, FOLDS_FILE)


def _foreign(folder: Path, owned: tuple[str, ...], *, recursive: bool) -> list[str]:
    """Entries under ``folder`` whose names match none of the ``owned`` patterns (relative paths)."""
    found = []
    for entry in sorted(folder.iterdir()):
        if not any(entry.match(pattern) for pattern in owned):
            found.append(entry.name)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            found += [f"{entry.name}/{name}" for name in _foreign(entry, owned, recursive=True)]
    return found


def prepare_output(folder: str | Path, *, resume: bool = False, overwrite: bool = False,
                   owned: tuple[str, ...] = _RUN_FILES, markers: tuple[str, ...] = _RUN_MARKERS,
                   recursive: bool = True) -> Path:
    """Make ``folder`` ready for a new run without losing anything by surprise.

    A missing or empty folder is created. A non-empty one is refused unless
    the run resumes (``resume``: kept as it is) or ``overwrite`` is given,
    which removes every file of the earlier run first, so that no stale ONNX
    graph or thresholds survive beside new weights. Only a folder that holds
    one of the ``markers`` and nothing but entries matching the ``owned``
    name patterns (at every depth when ``recursive``) counts as an earlier
    run: anything else there means it is someone's, and it is never cleared.

    Raises
    ------
    EchoError
        The folder is not empty and neither ``resume`` nor ``overwrite`` is
        given, or it holds files of someone else.

    Examples
    --------
    >>> import tempfile
    >>> folder = write_metadata(Path(tempfile.mkdtemp()) / "bundle", EchoConfig(), ["frog"])
    >>> prepare_output(folder)
    Traceback (most recent call last):
    ...
    echoengine.errors.EchoError: ...: not empty (an earlier run's output); pass --resume ...
    >>> sorted(prepare_output(folder, overwrite=True).iterdir())
    []
    """
    folder = Path(folder)
    if resume and overwrite:
        raise EchoError(f"{folder}: --resume continues the run there and --overwrite replaces it; give one")
    if resume:
        return folder
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if entries:
        foreign = _foreign(folder, owned, recursive=recursive)
        if not foreign and not any((folder / marker).exists() for marker in markers):
            foreign = [entry.name for entry in entries]
        if foreign:
            raise EchoError(f"{folder}: holds files echoengine did not write ({', '.join(foreign[:3])}); "
                            "choose another output folder")
        if not overwrite:
            raise EchoError(f"{folder}: not empty (an earlier run's output); pass --resume to continue it or "
                            "--overwrite to replace it")
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def find_bundles(folder: str | Path) -> list[Path]:
    """The bundle folders at ``folder``: itself, or the fold bundles of a CV folder.

    Raises
    ------
    EchoError
        Neither a bundle nor a folder of bundles.
    """
    folder = Path(folder)
    if BundleFiles(folder).config.is_file():
        return [folder]
    members = sorted(p.parent for p in folder.glob(f"fold*/{WEIGHTS_FILE}") if BundleFiles(p.parent).metrics.is_file())
    if not members:
        raise EchoError(f"{folder}: neither a model bundle nor a cross-validation folder of finished fold bundles")
    return members
