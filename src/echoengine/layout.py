"""The files of a model bundle and of a cross-validation folder: names, paths, metadata.

This module imports no torch: the serving runtime (``echoengine[serve]``)
reads bundles through it; :mod:`echoengine.bundle` adds the model.

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

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from echoengine.config import CONFIG_FILE, EchoConfig
from echoengine.errors import EchoError
from echoengine.files import TEMPORARY_SUFFIX, write_text_atomic

if TYPE_CHECKING:  # the model is torch's: this module never imports it
    from echoengine.models import Classifier

__all__ = ["ANNOTATIONS_FILE", "CHECKPOINT_FILE", "CLASSES_FILE", "CONFIG_FILE", "CV_FOLDS_FILE", "FOLDS_FILE",
           "HISTORY_FILE", "METRICS_FILE", "NODES_DIR", "ONNX_FILE", "OOF_PREDICTIONS_FILE", "PER_CLASS_FILE",
           "PLOTS_DIR", "PROBE_DIR", "SELECTION_HISTORY_FILE", "SPLITS_FILE", "TAXONOMY_FILE", "TENSORBOARD_DIR",
           "TEST_PREDICTIONS_FILE", "THRESHOLDS_FILE", "WEIGHTS_FILE", "Bundle", "BundleFiles", "CrossValidationFiles",
           "check_ensemble", "find_bundles", "prepare_output", "read_bundle", "read_classes", "read_splits",
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
TAXONOMY_FILE = "taxonomy.csv"  # the lineage of each class (family, genus, ...), when the model has one
NODES_DIR = "nodes"  # a per-node model's bundle of each node of the taxonomy
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
    def taxonomy(self) -> Path:
        """The classes' lineages (:mod:`echoengine.taxonomy`), in a model of a taxonomy."""
        return self.folder / TAXONOMY_FILE

    def node(self, lineage: tuple[str, ...]) -> Path:
        """The bundle of one node of a per-node model: ``nodes/<names>`` (``nodes/root`` for the root)."""
        return self.folder / NODES_DIR / ("/".join(lineage) if lineage else "root")

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
    """A bundle: its folder, config and class names, and its model (in eval mode) when loaded with torch.

    :func:`echoengine.bundle.load_bundle` loads the model;
    :func:`read_bundle` reads the rest, for a scorer of the exported graph.
    A built-in bundle (:mod:`echoengine.builtin`) has no folder of its own:
    ``builtin`` is its spec, whose ``identity`` stands for the weights' digest.
    """

    path: Path
    config: EchoConfig
    classes: list[str]
    model: Classifier | Any = None
    builtin: Any = None

    @property
    def weights_identity(self) -> str:
        """What tells these weights from others: a built-in's identity, else the weights' size and time."""
        if self.builtin is not None:
            return self.builtin.identity
        stat = self.files.weights.stat()
        return f"{stat.st_size}-{stat.st_mtime_ns}"

    @property
    def files(self) -> BundleFiles:
        """The paths of the bundle's files (see :class:`BundleFiles`)."""
        return BundleFiles(self.path)

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



def read_bundle(folder: str | Path, *, need: tuple[str, ...] = ()) -> Bundle:
    """A bundle's config and classes, without its model (no torch): what an ONNX scorer needs.

    Parameters
    ----------
    folder : path
        A bundle folder.
    need : tuple of str
        Names of further files that must be there (e.g. ``(ONNX_FILE,)``).

    Raises
    ------
    EchoError
        The folder is not a complete bundle.

    Examples
    --------
    >>> import tempfile
    >>> folder = write_metadata(tempfile.mkdtemp(), EchoConfig(), ["frog", "owl"])
    >>> _ = BundleFiles(folder).weights.write_bytes(b"weights")
    >>> read_bundle(folder).classes
    ['frog', 'owl']
    """
    folder = Path(folder)
    files = BundleFiles(folder)
    missing = [path.name for path in (files.config, files.classes, files.weights, *(folder / n for n in need))
               if not path.is_file()]
    if missing:
        raise EchoError(f"{folder}: not a model bundle (missing {', '.join(missing)})")
    config = EchoConfig.load(files.config).portable()  # the cache, workers and device are the reader's
    return Bundle(folder, config, read_classes(folder))

# What training, cross-validation, evaluation, calibration and export write into a bundle or CV folder
# (checked at every depth: fold, probe and report folders hold the same kinds of files), and the files that
# show a folder is an earlier run's. Desktop litter may go with it.
_RUN_FILES = (CONFIG_FILE, CLASSES_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, HISTORY_FILE, SELECTION_HISTORY_FILE,
              SPLITS_FILE, ANNOTATIONS_FILE, METRICS_FILE, PER_CLASS_FILE, "per_class_*.csv", ONNX_FILE,
              THRESHOLDS_FILE, TAXONOMY_FILE, NODES_DIR, FOLDS_FILE, CV_FOLDS_FILE, OOF_PREDICTIONS_FILE,
              TEST_PREDICTIONS_FILE, PLOTS_DIR,
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


def _model_inputs(config: EchoConfig) -> tuple:
    birdnet = config.model.uses_birdnet
    return (config.fingerprint("audio", "frontend"), config.model.embedder, config.model.embedding_hop,
            config.model.birdnet_blocks if birdnet else (), config.model.birdnet_speeds if birdnet else ())


def check_ensemble(bundles: list[Bundle]) -> None:
    """Raise an EchoError unless the bundles share their classes and the way their inputs are computed.

    The fold bundles of one cross-validation do: they score as an ensemble,
    each window's input computed once for all of them.
    """
    first = bundles[0]
    for other in bundles[1:]:
        if other.classes != first.classes:
            raise EchoError(f"{other.path}: its classes differ from those of {first.path}")
        if _model_inputs(other.config) != _model_inputs(first.config):
            raise EchoError(f"{other.path}: its audio or front-end config differs from that of {first.path}")
