"""Single-label and multi-label: the few things the two kinds of labels do differently.

A single-label model learns the one class of each labelled file; a multi-label
model learns which classes each window of an annotated recording holds (from
its boxes). A training run (:mod:`echoengine.trainrun`), a cross-validation
(:mod:`echoengine.crossval`), :func:`echoengine.evaluation.evaluate` and the
report are written once, and ask their :class:`LabelKind` what differs:

===================  =====================================  =============================================
..                   single-label (:data:`SINGLE_LABEL`)     multi-label (:data:`MULTI_LABEL`)
===================  =====================================  =============================================
data                 labelled files                          recordings and their annotated boxes
splits and folds     stratified by label, grouped            grouped by recording
a file's scores      the mean of its windows'                its best window's
metrics              accuracy, macro-F1, LWLRAP, mAP, ECE    LWLRAP, mAP, F1 per window and per recording
report               per_class.csv, confusion, training      per_class_window.csv, per_class_recording.csv
cross-validation     pooled out-of-fold predictions          the folds' mean and std
===================  =====================================  =============================================

The loss (cross-entropy, or a masked BCE) follows ``model.multilabel`` in
:mod:`echoengine.training`.

Examples
--------
>>> kind = label_kind(multilabel=True)
>>> kind.name, kind.items
('multi-label', 'recordings')
>>> SINGLE_LABEL.fold_row({"accuracy": 0.9, "balanced_accuracy": 0.8, "macro_f1": 0.7, "top5_accuracy": 1.0,
...                        "lwlrap": 0.9, "map": 0.85, "ece": 0.05})["macro_f1"]
0.7
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import catalog, plots, sources, splits
from echoengine.config import EchoConfig
from echoengine.errors import DataError, EchoError
from echoengine.files import write_csv_atomic
from echoengine.layout import TAXONOMY_FILE, BundleFiles, CrossValidationFiles, selection_history
from echoengine.metrics import (
    BASELINE_KEYS,
    MULTILABEL_KEYS,
    SUMMARY_KEYS,
    classification_metrics,
    multilabel_metrics,
)
from echoengine.prediction import clip_maxes, clip_means
from echoengine.rankmetrics import rank_figures, rank_metrics, rank_row, rank_text
from echoengine.taxonomy import read_taxonomy

__all__ = ["LEVELS", "MULTI_LABEL", "SINGLE_LABEL", "LabelKind", "group_folds", "inner_split", "label_kind"]

logger = logging.getLogger("echoengine")

#: What metrics.json says of how a file's windows made its probabilities.
_POOLING_NOTES = {"mean": "mean of window probabilities",
                  "logit-mean": "softmax of the mean of window logits (as the clips the head was fitted on)"}

# The levels a multi-label model is scored at: each window of the grid, and each recording (its best window).
LEVELS = ("window", "recording")
Boxes = pd.DataFrame | None


def inner_split(table: pd.DataFrame, *, val_fraction: float, seed: int) -> np.ndarray:
    """True for the rows that train, False for the validation rows, within training folds.

    Classes with a single recording among these rows all train (they cannot
    also be validated without a leak).

    Examples
    --------
    >>> table = pd.DataFrame({"label": ["a"] * 4 + ["b"], "group": ["r1", "r2", "r3", "r4", "r5"]})
    >>> trains = inner_split(table, val_fraction=0.25, seed=0)
    >>> int(trains.sum()), bool(trains[-1])
    (4, True)
    """
    recordings = table.groupby("label")["group"].transform("nunique").to_numpy()
    trains = np.ones(len(table), dtype=bool)
    several = recordings >= 2
    if several.any():
        parts = splits.split(table[several], val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        trains[several] = parts != "val"
    return trains


def group_folds(table: pd.DataFrame, *, folds: int, seed: int = 0) -> np.ndarray:
    """The fold of every row, whole groups (source recordings) together, groups shuffled with the seed.

    Examples
    --------
    >>> group_folds(pd.DataFrame({"group": ["a", "a", "b", "c", "d"]}), folds=2).tolist()
    [1, 1, 0, 0, 1]
    """
    groups = np.array(sorted(table["group"].unique()))
    if len(groups) < folds:
        raise DataError(f"{folds} folds need at least {folds} source recordings, got {len(groups)}")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[index]: position % folds for position, index in enumerate(order)}
    return table["group"].map(fold_of).to_numpy()


class LabelKind(ABC):
    """What one kind of labels does its own way; the runs, the evaluation and the report ask it.

    Use :data:`SINGLE_LABEL` or :data:`MULTI_LABEL` (or :func:`label_kind`).
    ``boxes`` below are a multi-label run's annotated boxes, None for
    single-label data, whose labels are the table's ``label`` column.

    Attributes
    ----------
    name : str
        ``"single-label"`` or ``"multi-label"``.
    multilabel : bool
    items : str
        What a row of its data is, in messages: ``"files"`` or ``"recordings"``.
    prefix, training : str
        How its cross-validation (``"{folds}-fold {prefix}cross-validation"``)
        and its training run announce themselves.
    fold_columns : tuple of str
        The columns of a cross-validation's ``folds.csv``.
    json_indent : int
        The indent of its ``metrics.json``.
    thresholded : bool
        Whether its metrics depend on per-class thresholds (``thresholds.csv``).

    Examples
    --------
    >>> SINGLE_LABEL.fold_columns
    ('path', 'label', 'group', 'fold')
    """

    name: str
    multilabel: bool
    items: str
    prefix: str
    training: str
    fold_columns: tuple[str, ...]
    json_indent: int
    thresholded: bool

    def __repr__(self) -> str:
        return f"<{self.name} labels>"

    # ---- its data, splits and folds ------------------------------------------------------------------------------
    @abstractmethod
    def read(self, data: str | Path, config: EchoConfig, *, boxes_source: dict | None = None,
             progress: bool = False) -> tuple[pd.DataFrame, Boxes]:
        """The usable rows of a dataset (checked) and their boxes; ``boxes_source`` as for
        :func:`echoengine.sources.annotation_boxes` (``annotations``, ``negatives``, ``columns``)."""

    @abstractmethod
    def saved_boxes(self, folder: Path) -> Boxes:
        """The boxes a run saved in its folder (``annotations.csv``)."""

    @abstractmethod
    def classes(self, table: pd.DataFrame, boxes: Boxes) -> list[str]:
        """The classes a model learns from these rows, sorted."""

    @abstractmethod
    def split(self, table: pd.DataFrame, config: EchoConfig) -> np.ndarray:
        """Each row's part of a training run: ``"train"``, ``"val"``, ``"test"`` (or ``"excluded"``)."""

    @abstractmethod
    def fold_split(self, rest: pd.DataFrame, config: EchoConfig, *, seed: int) -> np.ndarray:
        """Each row's part (``"train"`` or ``"val"``) of the training folds of a cross-validation fold."""

    @abstractmethod
    def folds(self, table: pd.DataFrame, config: EchoConfig) -> np.ndarray:
        """Each row's fold, grouped by source recording (``splits.EXCLUDED``: left out;
        ``splits.TRAIN_ONLY``: trained on in every fold, never tested)."""

    @abstractmethod
    def sizes(self, table: pd.DataFrame, boxes: Boxes) -> str:
        """The size of its data beside rows and classes, for a cross-validation's first message."""

    @abstractmethod
    def boxes_note(self, boxes: Boxes) -> str:
        """What a training run's first message says of the boxes."""

    # ---- its scores ----------------------------------------------------------------------------------------------
    @abstractmethod
    def known(self, table: pd.DataFrame, classes: list[str]) -> np.ndarray:
        """Which rows can be scored against the model's classes."""

    @abstractmethod
    def score(self, table: pd.DataFrame, classes: list[str], windows: np.ndarray, rows: np.ndarray,
              targets: np.ndarray, *, thresholds: np.ndarray | None = None, skipped: int = 0,
              models: int = 1, pooling: str = "mean") -> tuple[dict, np.ndarray]:
        """The metrics of window probabilities, and the rows' scores (n_rows, n_classes) pooled from them.

        ``windows``, ``rows`` and ``targets`` are those of
        :func:`echoengine.prediction.window_probabilities`; ``skipped`` rows
        had labels outside the classes; ``models`` scored together;
        ``pooling`` is the model's (:func:`echoengine.scoring.file_pooling`; multi-label: the max).
        """

    # ---- what metrics.json notes beside the scores ---------------------------------------------------------------
    @abstractmethod
    def held_out_notes(self, *, part: str, data: str | Path, refit: bool, best_epoch: int) -> tuple[dict, str]:
        """A training run's notes on its held-out ``part``, and the heading of its report."""

    @abstractmethod
    def fold_notes(self, *, fold: int, best_epoch: int) -> dict:
        """A cross-validation fold's notes."""

    @abstractmethod
    def evaluation_notes(self, *, evaluated_on: str, seen: int) -> dict:
        """An evaluation's notes: the data, and how many of its files trained or selected the model."""

    # ---- its report ----------------------------------------------------------------------------------------------
    @abstractmethod
    def summary(self, metrics: dict) -> dict:
        """What ``metrics.json`` holds."""

    @abstractmethod
    def tables(self, metrics: dict, out: Path) -> list[Path]:
        """Write the per-class tables into ``out``; return their paths."""

    @abstractmethod
    def figures(self, metrics: dict, classes: list[str], out: Path, *, history: pd.DataFrame | None = None,
                best_epoch: int | None = None) -> list[Path]:
        """Draw the report's figures into ``out/plots``; return their paths."""

    @abstractmethod
    def text(self, metrics: dict) -> str:
        """The scalar metrics and the per-class table as text."""

    # ---- its cross-validation ------------------------------------------------------------------------------------
    @abstractmethod
    def fold_row(self, metrics: dict) -> dict:
        """A fold's scalars in ``cv_folds.csv`` (their mean and std summarise the folds)."""

    @abstractmethod
    def headline(self, metrics: dict) -> str:
        """A fold's scores in one line."""

    @abstractmethod
    def finished(self, folder: Path) -> bool:
        """Whether a fold left all it writes (a resumed cross-validation keeps it)."""

    @abstractmethod
    def save_test_scores(self, folder: Path, scores: np.ndarray, test: pd.DataFrame, classes: list[str]) -> None:
        """Save a fold's scores of its test rows, if it pools them."""

    @abstractmethod
    def saved_test_scores(self, folder: Path, classes: list[str]) -> np.ndarray | None:
        """A finished fold's saved test scores, if it pools them."""

    @abstractmethod
    def pool_folds(self, table: pd.DataFrame, folds: np.ndarray, classes: list[str],
                   scores: list[np.ndarray | None], out: Path) -> dict:
        """What the folds give together beyond their mean and std (written into ``out``): summary entries."""


class _SingleLabel(LabelKind):
    name, multilabel, items = "single-label", False, "files"
    prefix, training = "", "training"
    fold_columns = ("path", "label", "group", "fold")
    json_indent, thresholded = 2, False

    def read(self, data, config, *, boxes_source=None, progress=False):
        usable, _ = sources.labelled_files(data, config, progress=progress)
        return usable, None

    def saved_boxes(self, folder):
        return None

    def classes(self, table, boxes):
        return catalog.class_names(table)

    def split(self, table, config):
        data = config.data
        val_fraction = 0.0 if config.convex_head() else data.val_fraction  # L-BFGS selects by inner CV
        return splits.split(table, val_fraction=val_fraction, test_fraction=data.test_fraction,
                             seed=data.split_seed, sparse_classes=data.sparse_classes)

    def fold_split(self, rest, config, *, seed):
        trains = (np.ones(len(rest), dtype=bool) if config.convex_head()  # selects by its own inner CV
                  else inner_split(rest, val_fraction=config.data.val_fraction, seed=seed))
        return np.where(trains, "train", "val")

    def folds(self, table, config):
        data = config.data
        return splits.kfold(table, folds=data.folds, seed=data.split_seed, sparse_classes=data.sparse_classes)

    def sizes(self, table, boxes):
        return f"{table['group'].nunique()} source recordings"

    def boxes_note(self, boxes):
        return ""

    def known(self, table, classes):
        known = table["label"].isin(classes).to_numpy()
        if not known.any():
            raise EchoError("none of the labels of the data are among the model's classes")
        return known

    def score(self, table, classes, windows, rows, targets, *, thresholds=None, skipped=0, models=1,
              pooling="mean"):
        files = clip_means(windows, rows, n_rows=len(table), pooling=pooling)
        loaded = ~np.isnan(files).any(axis=1)
        labels = table["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
        metrics = classification_metrics(labels[loaded], files[loaded], classes)
        metrics.update(skipped_unknown_labels=skipped, failed_files=int((~loaded).sum()),
                       clip_pooling=_POOLING_NOTES[pooling], models=models)
        return metrics, files

    def held_out_notes(self, *, part, data, refit, best_epoch):
        honest = part == "test" or not refit
        if not honest:
            logger.warning("no test part, and --refit trained on the validation part: the scores below are not held "
                           "out")
        evaluated_on = f"{part} part of {data}" + ("" if honest else " (trained on: not held out)")
        heading = f"held-out {part} files (best epoch {best_epoch}):"
        return {"evaluated_on": evaluated_on, "best_epoch": best_epoch}, heading

    def fold_notes(self, *, fold, best_epoch):
        return {"best_epoch": best_epoch}

    def evaluation_notes(self, *, evaluated_on, seen):
        return {"evaluated_on": evaluated_on, "files_seen_in_training": seen}

    def summary(self, metrics):
        return metrics

    def tables(self, metrics, out):
        return [write_csv_atomic(BundleFiles(out).per_class, pd.DataFrame(metrics["per_class"]), index=False)]

    def figures(self, metrics, classes, out, *, history=None, best_epoch=None):
        files = BundleFiles(out)
        confusion = np.array(metrics["confusion_matrix"])
        written = [plots.plot_confusion(confusion, classes, files.confusion_plot)]
        if "taxonomy" in metrics:
            written += rank_figures(metrics["taxonomy"], files.plots)
        if history is not None and len(history):
            written.append(plots.plot_history(history, files.training_plot, best_epoch=best_epoch))
        return written

    def text(self, metrics):
        failed = metrics.get("failed_files")
        lines = [f"{metrics['n']} files" + (f" ({failed} failed to load)" if failed else "")]
        lines += [f"  {key:<18} {metrics[key]:.4f}" for key in SUMMARY_KEYS if key in metrics]
        width = max([len(row["class"]) for row in metrics["per_class"]] + [5])
        lines.append(f"\n  {'class':<{width}} {'precision':>9} {'recall':>7} {'f1':>6} {'ap':>6} {'support':>7}")
        for row in metrics["per_class"]:
            ap = "-" if row["ap"] is None else f"{row['ap']:.3f}"
            lines.append(f"  {row['class']:<{width}} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                         f"{row['f1']:>6.3f} {ap:>6} {row['support']:>7}")
        if "taxonomy" in metrics:
            lines += ["", rank_text(metrics["taxonomy"])]
        return "\n".join(lines)

    def fold_row(self, metrics):
        row = {key: metrics[key] for key in SUMMARY_KEYS + BASELINE_KEYS if key in metrics}
        return {**row, **rank_row(metrics["taxonomy"])} if "taxonomy" in metrics else row

    def headline(self, metrics):
        line = f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
        if "baseline_accuracy" in metrics:
            line += (f" (baseline, logistic regression on the same embeddings: accuracy "
                     f"{metrics['baseline_accuracy']:.3f}, macro-F1 {metrics['baseline_macro_f1']:.3f})")
        return line

    def finished(self, folder):
        files = BundleFiles(folder)
        return files.metrics.is_file() and files.test_predictions.is_file()

    def save_test_scores(self, folder, scores, test, classes):
        table = pd.DataFrame(scores, columns=classes).assign(path=test["path"], label=test["label"])
        write_csv_atomic(BundleFiles(folder).test_predictions, table, index=False)

    def saved_test_scores(self, folder, classes):
        return pd.read_csv(BundleFiles(folder).test_predictions)[classes].to_numpy()

    def pool_folds(self, table, folds, classes, scores, out):
        """The out-of-fold predictions of every file and their metrics; the folds' curves and confusion matrix."""
        oof = np.full((len(table), len(classes)), np.nan)
        for k, fold_scores in enumerate(scores):
            oof[np.flatnonzero(folds == k)] = fold_scores
        held = ~np.isnan(oof).any(axis=1)
        labels = table["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
        pooled = classification_metrics(labels[held], oof[held], classes)
        files = CrossValidationFiles(out)
        taxonomy = read_taxonomy(files.folder / TAXONOMY_FILE)
        if taxonomy is not None:
            pooled["taxonomy"] = rank_metrics(table["label"].to_numpy()[held], oof[held], classes, taxonomy)
            rank_figures(pooled["taxonomy"], files.plots)
        oof_table = pd.DataFrame(oof, columns=classes).assign(path=table["path"], label=table["label"], fold=folds)
        write_csv_atomic(files.oof_predictions, oof_table, index=False)
        histories = [pd.read_csv(selection_history(files.fold(k).folder)) for k in range(len(scores))]
        plots.plot_cv_boxplot(histories, files.accuracy_plot)
        title = f"out-of-fold confusion matrix ({len(histories)} folds, accuracy {pooled['accuracy']:.1%})"
        confusion = np.array(pooled["confusion_matrix"])
        plots.plot_confusion(confusion, classes, files.confusion_plot, title=title)
        return {"pooled_out_of_fold": pooled}


class _MultiLabel(LabelKind):
    name, multilabel, items = "multi-label", True, "recordings"
    prefix, training = "multi-label ", "multi-label training of"
    fold_columns = ("path", "group", "fold")
    json_indent, thresholded = 1, True

    def read(self, data, config, *, boxes_source=None, progress=False):
        usable = sources.recordings(data, config, progress=progress)
        boxes = sources.annotation_boxes(data, **(boxes_source or {}))
        return usable, boxes[boxes["path"].isin(usable["path"])].reset_index(drop=True)

    def saved_boxes(self, folder):
        boxes = pd.read_csv(BundleFiles(folder).annotations, keep_default_na=False, dtype={"label": str, "path": str})
        for column in ("start", "end", "low_freq", "high_freq"):  # empty cells: NaN, not ""
            boxes[column] = pd.to_numeric(boxes[column], errors="coerce")
        return boxes

    def classes(self, table, boxes):
        return sorted(boxes.loc[boxes["positive"], "label"].unique())

    def split(self, table, config):
        data = config.data
        return splits.split_groups(table, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                                    seed=data.split_seed)

    def fold_split(self, rest, config, *, seed):
        return splits.split_groups(rest, val_fraction=config.data.val_fraction, test_fraction=0.0, seed=seed)

    def folds(self, table, config):
        return group_folds(table, folds=config.data.folds, seed=config.data.split_seed)

    def sizes(self, table, boxes):
        return f"{int(boxes['positive'].sum())} boxes"

    def boxes_note(self, boxes):
        return f", {self.sizes(None, boxes)}"

    def known(self, table, classes):
        return np.ones(len(table), dtype=bool)  # a recording's labels are its boxes'

    def score(self, table, classes, windows, rows, targets, *, thresholds=None, skipped=0, models=1,
              pooling="max"):
        best = clip_maxes(windows, rows, n_rows=len(table))
        present = np.nan_to_num(clip_maxes(np.nan_to_num(targets), rows, n_rows=len(table)))
        loaded = ~np.isnan(best).any(axis=1)
        return {"window": multilabel_metrics(targets, windows, classes, thresholds=thresholds),
                "recording": multilabel_metrics(present[loaded], best[loaded], classes, thresholds=thresholds)}, best

    def held_out_notes(self, *, part, data, refit, best_epoch):
        evaluated_on = f"{part} part of {data}"
        return {"evaluated_on": evaluated_on}, f"{evaluated_on}:"

    def fold_notes(self, *, fold, best_epoch):
        return {"evaluated_on": f"fold {fold}", "best_epoch": best_epoch}

    def evaluation_notes(self, *, evaluated_on, seen):
        return {"evaluated_on": evaluated_on}

    def summary(self, metrics):
        return {key: {k: v for k, v in value.items() if k != "per_class"} if key in LEVELS else value
                for key, value in metrics.items()}

    def tables(self, metrics, out):
        files = BundleFiles(out)
        return [write_csv_atomic(files.per_class_at(level), metrics[level]["per_class"].round(4), index=False)
                for level in LEVELS]

    def figures(self, metrics, classes, out, *, history=None, best_epoch=None):
        return []

    def text(self, metrics):
        lines = [f"{'':10} {'LWLRAP':>8} {'mAP macro':>10} {'mAP micro':>10} {'macro-F1':>9} {'samples':>8}"]
        for level in LEVELS:
            m = metrics[level]
            lines.append(f"{level:10} {m['lwlrap']:>8.4f} {m['map_macro']:>10.4f} {m['map_micro']:>10.4f} "
                         f"{m['macro_f1']:>9.4f} {m['samples']:>8}")
        per_class = metrics["recording"]["per_class"].sort_values("ap", ascending=False)
        lines += ["", "per class (recording level; F1 at the threshold):",
                  per_class[["class", "ap", "f1", "precision", "recall", "threshold", "support"]].round(3).to_string(
                      index=False)]
        return "\n".join(lines)

    def fold_row(self, metrics):
        return {f"{level}_{key}": metrics[level][key] for level in LEVELS for key in MULTILABEL_KEYS}

    def headline(self, metrics):
        recording, window = metrics["recording"], metrics["window"]
        return (f"recording LWLRAP {recording['lwlrap']:.3f}, mAP {recording['map_macro']:.3f}; "
                f"window LWLRAP {window['lwlrap']:.3f}")

    def finished(self, folder):
        return BundleFiles(folder).metrics.is_file()

    def save_test_scores(self, folder, scores, test, classes):
        return None

    def saved_test_scores(self, folder, classes):
        return None

    def pool_folds(self, table, folds, classes, scores, out):
        return {}


SINGLE_LABEL: LabelKind = _SingleLabel()
MULTI_LABEL: LabelKind = _MultiLabel()


def label_kind(*, multilabel: bool) -> LabelKind:
    """:data:`MULTI_LABEL` or :data:`SINGLE_LABEL`.

    Examples
    --------
    >>> label_kind(multilabel=False)
    <single-label labels>
    """
    return MULTI_LABEL if multilabel else SINGLE_LABEL
