"""K-fold cross-validation, grouped by source recording: one path for single-label and multi-label data.

Fold ``k`` is held out for testing while a model trains on the others; early
stopping selects on a validation part carved (grouped) out of the training
folds, so the held-out fold never steers training and its scores are
honest. Single-label folds are stratified by class; multi-label folds hold
whole recordings (their boxes in ``annotations.csv``). The output folder
keeps every fold's bundle, so the folds can serve together as an ensemble::

    OUT/
      fold0/ ... fold{k-1}/   complete bundles, each with its held-out metrics
      folds.csv               which file is in which fold
      cv_folds.csv            one row of metrics per fold
      metrics.json            per fold, mean, std (single-label: and pooled out-of-fold metrics)
      oof_predictions.csv     single-label: every file's out-of-fold probabilities
      plots/cv_val_accuracy.png, plots/confusion.png   (single-label)

What differs between the label kinds (folds, splits, metrics, report) is
asked of :class:`echoengine.labelkind.LabelKind`.

Examples
--------
>>> summary = cross_validate(table, EchoConfig(), "cv")  # doctest: +SKIP
>>> summary = cross_validate(recordings, config, "cv", boxes=boxes)  # multi-label  # doctest: +SKIP
>>> summary["mean"]["recording_lwlrap"]  # doctest: +SKIP
0.81
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import baseline, splits
from echoengine.cache import FeatureCache, feature_cache
from echoengine.config import MACHINE_SETTINGS, EchoConfig
from echoengine.errors import EchoError
from echoengine.evaluation import evaluate, write_report
from echoengine.files import write_csv_atomic, write_text_atomic
from echoengine.hierfit import fit_model, write_taxonomy
from echoengine.labelkind import LabelKind, group_folds, inner_split, label_kind
from echoengine.layout import CONFIG_FILE, NODES_DIR, Bundle, BundleFiles, CrossValidationFiles, selection_history
from echoengine.taxonomy import Taxonomy

__all__ = ["cross_validate", "group_folds", "inner_split"]

# What a fold's saved config may differ in from the command's: a refit changes its epoch counts; the baseline
# is scored beside the model, not by it.
_FOLD_CHANGES = ("train.epochs", "train.patience", "train.warmup_epochs", "train.baseline", *MACHINE_SETTINGS)


def _check_resumable(out: Path, paths: pd.Series, folds: np.ndarray, config: EchoConfig) -> None:
    """Refuse to resume a CV run whose folds or settings differ from the command's: folds would mix them."""
    restart = "start again with --overwrite, or resume with the run's own data and options"
    files = CrossValidationFiles(out)
    if files.folds.is_file():
        before = pd.read_csv(files.folds, keep_default_na=False, dtype={"path": str})
        if not before[["path", "fold"]].astype(str).equals(
                pd.DataFrame({"path": paths.astype(str), "fold": folds.astype(str)}).reset_index(drop=True)):
            raise EchoError(f"{files.folds}: the data or the folds (--folds, the split seed) differ from the "
                            f"run's; {restart}")
    wanted = config.fingerprint(ignore=_FOLD_CHANGES)
    for saved in sorted(out.glob(f"fold*/{CONFIG_FILE}")):
        if EchoConfig.load(saved).fingerprint(ignore=_FOLD_CHANGES) != wanted:
            raise EchoError(f"{saved}: this fold was trained with other settings than the command's; {restart}")


def _started(files: BundleFiles) -> bool:
    """Whether a fold's training was under way: its checkpoint, or a per-node model's node bundles."""
    return files.checkpoint.is_file() or (files.folder / NODES_DIR).is_dir()


def _write_inputs(out: Path, kind, table: pd.DataFrame, folds: np.ndarray, boxes: pd.DataFrame | None,
                  taxonomy: Taxonomy | None) -> None:
    """What a CV folder keeps of its inputs: the folds, a multi-label run's boxes, the labels' taxonomy."""
    files = CrossValidationFiles(out)
    write_taxonomy(out, taxonomy)
    write_csv_atomic(files.folds, table.assign(fold=folds)[list(kind.fold_columns)], index=False)
    if boxes is not None:
        write_csv_atomic(files.annotations, boxes, index=False)


def cross_validate(
    table: pd.DataFrame,
    config: EchoConfig,
    out: str | Path,
    *,
    boxes: pd.DataFrame | None = None,
    taxonomy: Taxonomy | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train and test one model per fold; write the fold bundles and the summary.

    Parameters
    ----------
    table : pandas.DataFrame
        A scanned, labelled catalog (single-label; classes with a single
        source recording are trained on in every fold and never tested,
        ``data.sparse_classes = "train"``, or left out, ``"drop"``), or the
        recordings of ``boxes`` (multi-label).
    config : EchoConfig
        ``data.folds``, ``data.split_seed``, ``data.val_fraction`` and
        ``data.sparse_classes`` shape the folds.
    out : str or Path
    boxes : pandas.DataFrame, optional
        The annotated boxes of the recordings: a multi-label cross-validation,
        scored per window and per recording.
    taxonomy : Taxonomy, optional
        The labels' (:mod:`echoengine.hierfit`): in ``out`` and every fold.
    resume : bool
        Keep finished folds and continue an interrupted fold from its checkpoint.

    Returns
    -------
    dict
        What ``metrics.json`` holds: ``classes``, ``folds`` (each fold's
        scalars), their ``mean`` and ``std`` (single-label: and
        ``pooled_out_of_fold``).

    Examples
    --------
    >>> cross_validate(table, config.replace(data={"folds": 5}), "cv")["mean"]["accuracy"]  # doctest: +SKIP
    0.87
    """
    kind = label_kind(multilabel=boxes is not None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds = kind.folds(table, config)
    if resume:
        _check_resumable(out, table["path"], folds, config)
    _write_inputs(out, kind, table, folds, boxes, taxonomy)
    used = folds != splits.EXCLUDED  # TRAIN_ONLY rows are in every fold's training part
    table, folds = table[used].reset_index(drop=True), folds[used]
    run = _Folds(kind, table, folds, kind.classes(table, boxes), boxes, config, out, resume, progress, log, taxonomy)
    model = f"{config.model.embedder or config.model.backbone} + {config.model.head_name} head"
    log(f"{config.data.folds}-fold {kind.prefix}cross-validation of {model} on {len(table)} {kind.items}, "
        f"{len(run.classes)} classes, {kind.sizes(table, boxes)}")
    cache = feature_cache(config)
    return run.summarise([run.fold(k, cache) for k in range(config.data.folds)])


@dataclass
class _Folds:
    """One cross-validation: its rows and their folds, and what every fold shares."""

    kind: LabelKind
    table: pd.DataFrame
    folds: np.ndarray
    classes: list[str]
    boxes: pd.DataFrame | None
    config: EchoConfig
    out: Path
    resume: bool
    progress: bool
    log: Callable[[str], None]
    taxonomy: Taxonomy | None = None

    def fold(self, k: int, cache: FeatureCache | None) -> tuple[dict, np.ndarray | None]:
        """Train and test fold ``k`` (or keep it, finished, on resume): its metrics and test scores."""
        kind, files = self.kind, CrossValidationFiles(self.out).fold(k)
        folder = files.folder
        test = self.table[self.folds == k].reset_index(drop=True)
        rest = self.table[self.folds != k].reset_index(drop=True)
        if self.resume and kind.finished(folder):
            self.log(f"fold {k}: finished before, kept")
            metrics = json.loads(files.metrics.read_text(encoding="utf-8"))
            if baseline.applies(self.config) and "baseline_accuracy" not in metrics:  # finished before it existed
                metrics.update(baseline.baseline_metrics(rest, test, self.classes, self.config, cache=cache))
            return metrics, kind.saved_test_scores(folder, self.classes)
        parts = kind.fold_split(rest, self.config, seed=self.config.data.split_seed + k)
        self.log(f"fold {k}: train {int((parts == 'train').sum())}, validation {int((parts == 'val').sum())}, "
                 f"test {len(test)} {kind.items}")
        folder.mkdir(parents=True, exist_ok=True)
        splits = pd.concat([rest.assign(part=parts), test.assign(part="test")])
        write_csv_atomic(files.splits, splits[["path", "label", "group", "part"]], index=False)
        trained = fit_model(rest[parts == "train"], rest[parts == "val"], self.classes, self.config, folder,
                            taxonomy=self.taxonomy, resume=self.resume and _started(files), progress=self.progress,
                            log=self.log, boxes=self.boxes)
        bundle = Bundle(folder, self.config, self.classes, trained.model)
        metrics, scores = evaluate([bundle], test, boxes=self.boxes, cache=cache)
        if baseline.applies(self.config):  # the same training and test files, the same embeddings
            metrics.update(baseline.baseline_metrics(rest, test, self.classes, self.config, cache=cache))
        metrics.update(kind.fold_notes(fold=k, best_epoch=trained.best_epoch))
        write_report(metrics, self.classes, folder, kind=kind, history=pd.read_csv(selection_history(folder)),
                     best_epoch=trained.best_epoch)
        kind.save_test_scores(folder, scores, test, self.classes)
        self.log(f"fold {k}: {kind.headline(metrics)}")
        return metrics, scores

    def summarise(self, results: list[tuple[dict, np.ndarray | None]]) -> dict:
        """Write ``cv_folds.csv`` and ``metrics.json``: every fold's scalars, their mean and std, and what the
        label kind pools from the folds."""
        rows = [{"fold": k, **self.kind.fold_row(metrics)} for k, (metrics, _) in enumerate(results)]
        every = set.intersection(*(set(row) for row in rows))  # a fold without a readable test file: no baseline
        rows = [{key: value for key, value in row.items() if key in every} for row in rows]
        per_fold = pd.DataFrame(rows)
        files = CrossValidationFiles(self.out)
        write_csv_atomic(files.cv_folds, per_fold, index=False)
        columns = [c for c in per_fold.columns if c != "fold"]
        summary = {
            "classes": self.classes,
            "folds": rows,
            "mean": {c: round(float(per_fold[c].mean()), 4) for c in columns},
            "std": {c: round(float(per_fold[c].std(ddof=1)) if len(per_fold) > 1 else 0.0, 4) for c in columns},
        }
        summary.update(self.kind.pool_folds(self.table, self.folds, self.classes, [s for _, s in results], self.out))
        write_text_atomic(files.metrics, json.dumps(summary, indent=2) + "\n")
        return summary
