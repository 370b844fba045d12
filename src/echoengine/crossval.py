"""K-fold cross-validation, grouped by source recording and stratified by class.

Fold ``k`` is held out for testing while a model trains on the others; early
stopping selects on a validation part carved (grouped, stratified) out of
the training folds, so the held-out fold never steers training and its
scores are honest. The output folder keeps every fold's bundle, so the folds
can serve together as an ensemble::

    OUT/
      fold0/ ... fold{k-1}/   complete bundles, each with its held-out metrics
      folds.csv               which file is in which fold
      cv_folds.csv            one row of metrics per fold
      metrics.json            per fold, mean, std, and pooled out-of-fold metrics
      oof_predictions.csv     every file's out-of-fold probabilities
      plots/cv_val_accuracy.png, plots/confusion.png
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import catalog, plots
from echoengine.bundle import (
    ANNOTATIONS_FILE,
    CHECKPOINT_FILE,
    CV_FOLDS_FILE,
    FOLDS_FILE,
    METRICS_FILE,
    OOF_PREDICTIONS_FILE,
    SPLITS_FILE,
    TEST_PREDICTIONS_FILE,
    Bundle,
    selection_history,
)
from echoengine.cache import feature_cache
from echoengine.config import MACHINE_SETTINGS, EchoConfig
from echoengine.errors import DataError, EchoError
from echoengine.evaluation import (
    MULTILABEL_KEYS,
    SUMMARY_KEYS,
    classification_metrics,
    evaluate,
    evaluate_multilabel,
    write_multilabel_report,
    write_report,
)
from echoengine.files import write_text_atomic
from echoengine.training import fit_and_refit

__all__ = ["cross_validate", "cross_validate_multilabel", "group_folds", "inner_split"]


def inner_split(table: pd.DataFrame, *, val_fraction: float, seed: int) -> np.ndarray:
    """True for the rows that train, False for the validation rows, within training folds.

    Classes with a single recording among these rows all train (they cannot
    also be validated without a leak).
    """
    recordings = table.groupby("label")["group"].transform("nunique").to_numpy()
    trains = np.ones(len(table), dtype=bool)
    several = recordings >= 2
    if several.any():
        parts = catalog.split(table[several], val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        trains[several] = parts != "val"
    return trains


# What a fold's saved config may differ in from the command's: a refit changes its epoch counts.
_FOLD_CHANGES = ("train.epochs", "train.patience", "train.warmup_epochs", *MACHINE_SETTINGS)


def _check_resumable(out: Path, paths: pd.Series, folds: np.ndarray, config: EchoConfig) -> None:
    """Refuse to resume a CV run whose folds or settings differ from the command's: folds would mix them."""
    restart = "start again with --overwrite, or resume with the run's own data and options"
    if (out / FOLDS_FILE).is_file():
        before = pd.read_csv(out / FOLDS_FILE, keep_default_na=False, dtype={"path": str})
        if not before[["path", "fold"]].astype(str).equals(
                pd.DataFrame({"path": paths.astype(str), "fold": folds.astype(str)}).reset_index(drop=True)):
            raise EchoError(f"{out / 'folds.csv'}: the data or the folds (--folds, the split seed) differ from the "
                            f"run's; {restart}")
    wanted = config.fingerprint(ignore=_FOLD_CHANGES)
    for saved in sorted(out.glob("fold*/echoengine.toml")):
        if EchoConfig.load(saved).fingerprint(ignore=_FOLD_CHANGES) != wanted:
            raise EchoError(f"{saved}: this fold was trained with other settings than the command's; {restart}")


def cross_validate(
    table: pd.DataFrame,
    config: EchoConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train and test one model per fold; write the fold bundles and the summary.

    Parameters
    ----------
    table : pandas.DataFrame
        A scanned, labelled catalog. Classes with a single source recording
        are trained on in every fold and never tested (``data.sparse_classes
        = "train"``), or left out (``"drop"``).
    config : EchoConfig
        ``data.folds``, ``data.split_seed``, ``data.val_fraction`` and
        ``data.sparse_classes`` shape the folds.
    out : str or Path
    resume : bool
        Keep finished folds and continue an interrupted fold from its checkpoint.

    Returns
    -------
    dict
        What ``metrics.json`` holds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = config.data
    folds = catalog.kfold(table, folds=data.folds, seed=data.split_seed, sparse_classes=data.sparse_classes)
    if resume:
        _check_resumable(out, table["path"], folds, config)
    table.assign(fold=folds)[["path", "label", "group", "fold"]].to_csv(out / FOLDS_FILE, index=False)
    used = folds != catalog.EXCLUDED  # TRAIN_ONLY rows are in every fold's training part
    table, folds = table[used].reset_index(drop=True), folds[used]
    classes = catalog.class_names(table)
    log(f"{data.folds}-fold cross-validation of {config.model.embedder or config.model.backbone} + "
        f"{config.model.head_name} head on "
        f"{len(table)} files, {len(classes)} classes, {table['group'].nunique()} source recordings")
    cache = feature_cache(config)
    oof = np.full((len(table), len(classes)), np.nan)
    fold_metrics, histories = [], []
    for k in range(data.folds):
        bundle_dir = out / f"fold{k}"
        test = table[folds == k].reset_index(drop=True)
        rest = table[folds != k].reset_index(drop=True)
        metrics_file, predictions_file = bundle_dir / METRICS_FILE, bundle_dir / TEST_PREDICTIONS_FILE
        if resume and metrics_file.is_file() and predictions_file.is_file():
            log(f"fold {k}: finished before, kept")
            result = json.loads(metrics_file.read_text(encoding="utf-8"))
            probabilities = pd.read_csv(predictions_file)[classes].to_numpy()
        else:
            trains = (np.ones(len(rest), dtype=bool) if config.convex_head()  # selects by its own inner CV
                      else inner_split(rest, val_fraction=data.val_fraction, seed=data.split_seed + k))
            log(f"fold {k}: train {int(trains.sum())}, validation {int((~trains).sum())}, test {len(test)} files")
            bundle_dir.mkdir(parents=True, exist_ok=True)
            splits = pd.concat([rest.assign(part=np.where(trains, "train", "val")), test.assign(part="test")])
            splits[["path", "label", "group", "part"]].to_csv(bundle_dir / SPLITS_FILE, index=False)
            trained = fit_and_refit(rest[trains], rest[~trains], classes, config, bundle_dir,
                                    resume=resume and (bundle_dir / CHECKPOINT_FILE).is_file(), progress=progress,
                                    log=log)
            bundle = Bundle(bundle_dir, config, classes, trained.model)
            result, probabilities = evaluate([bundle], test, cache=cache)
            result["best_epoch"] = trained.best_epoch
            write_report(result, classes, bundle_dir, history=pd.read_csv(selection_history(bundle_dir)),
                         best_epoch=trained.best_epoch)
            pd.DataFrame(probabilities, columns=classes).assign(path=test["path"], label=test["label"]).to_csv(
                predictions_file, index=False)
            log(f"fold {k}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
        oof[np.flatnonzero(folds == k)] = probabilities
        fold_metrics.append({"fold": k, **{key: result[key] for key in SUMMARY_KEYS}})
        histories.append(pd.read_csv(selection_history(bundle_dir)))
    return _summarise(table, folds, classes, oof, fold_metrics, histories, out)


def _summarise(table, folds, classes, oof, fold_metrics, histories, out: Path) -> dict:
    per_fold = pd.DataFrame(fold_metrics)
    per_fold.to_csv(out / CV_FOLDS_FILE, index=False)
    held = ~np.isnan(oof).any(axis=1)
    labels = table["label"].map({name: i for i, name in enumerate(classes)}).to_numpy()
    pooled = classification_metrics(labels[held], oof[held], classes)
    summary = {
        "classes": classes,
        "folds": fold_metrics,
        "mean": {key: round(float(per_fold[key].mean()), 4) for key in SUMMARY_KEYS},
        "std": {key: round(float(per_fold[key].std(ddof=1)) if len(per_fold) > 1 else 0.0, 4) for key in SUMMARY_KEYS},
        "pooled_out_of_fold": pooled,
    }
    write_text_atomic(out / METRICS_FILE, json.dumps(summary, indent=2) + "\n")
    pd.DataFrame(oof, columns=classes).assign(path=table["path"], label=table["label"], fold=folds).to_csv(
        out / OOF_PREDICTIONS_FILE, index=False)
    plots.plot_cv_boxplot(histories, out / "plots" / "cv_val_accuracy.png")
    title = f"out-of-fold confusion matrix ({len(histories)} folds, accuracy {pooled['accuracy']:.1%})"
    plots.plot_confusion(np.array(pooled["confusion_matrix"]), classes, out / "plots" / "confusion.png", title=title)
    return summary


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


def cross_validate_multilabel(
    recordings: pd.DataFrame,
    boxes: pd.DataFrame,
    config: EchoConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Multi-label k-fold cross-validation: folds of recordings (grouped), metrics per window and per recording.

    Each fold trains on the others (early stopping on a grouped validation
    part of them) and is scored by :func:`echoengine.evaluation.evaluate_multilabel`;
    ``metrics.json`` holds every fold's scores and their mean and std. The
    fold bundles serve together as an ensemble (probabilities averaged).
    """
    from echoengine.catalog import split_groups

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = config.data
    folds = group_folds(recordings, folds=data.folds, seed=data.split_seed)
    if resume:
        _check_resumable(out, recordings["path"], folds, config)
    recordings.assign(fold=folds)[["path", "group", "fold"]].to_csv(out / FOLDS_FILE, index=False)
    boxes.to_csv(out / ANNOTATIONS_FILE, index=False)
    classes = sorted(boxes.loc[boxes["positive"], "label"].unique())
    log(f"{data.folds}-fold multi-label cross-validation of {config.model.embedder or config.model.backbone} + "
        f"{config.model.head_name} head on {len(recordings)} recordings, {len(classes)} classes, "
        f"{int(boxes['positive'].sum())} boxes")
    cache = feature_cache(config)
    rows = []
    for k in range(data.folds):
        bundle_dir = out / f"fold{k}"
        test = recordings[folds == k].reset_index(drop=True)
        rest = recordings[folds != k].reset_index(drop=True)
        if resume and (bundle_dir / METRICS_FILE).is_file():
            log(f"fold {k}: finished before, kept")
            summary = json.loads((bundle_dir / METRICS_FILE).read_text(encoding="utf-8"))
        else:
            parts = split_groups(rest, val_fraction=data.val_fraction, test_fraction=0.0, seed=data.split_seed + k)
            log(f"fold {k}: train {int((parts == 'train').sum())}, validation {int((parts == 'val').sum())}, "
                f"test {len(test)} recordings")
            bundle_dir.mkdir(parents=True, exist_ok=True)
            pd.concat([rest.assign(part=parts), test.assign(part="test")])[["path", "label", "group", "part"]].to_csv(
                bundle_dir / SPLITS_FILE, index=False)
            trained = fit_and_refit(rest[parts == "train"], rest[parts == "val"], classes, config, bundle_dir,
                                    resume=resume and (bundle_dir / CHECKPOINT_FILE).is_file(), progress=progress,
                                    log=log, boxes=boxes)
            metrics = evaluate_multilabel([Bundle(bundle_dir, config, classes, trained.model)], test, boxes,
                                          cache=cache)
            write_multilabel_report(metrics, bundle_dir, evaluated_on=f"fold {k}", best_epoch=trained.best_epoch)
            summary = json.loads((bundle_dir / METRICS_FILE).read_text(encoding="utf-8"))
            log(f"fold {k}: recording LWLRAP {summary['recording']['lwlrap']:.3f}, "
                f"mAP {summary['recording']['map_macro']:.3f}; window LWLRAP {summary['window']['lwlrap']:.3f}")
        rows.append({"fold": k, **{f"{level}_{key}": summary[level][key] for level in ("window", "recording")
                                   for key in MULTILABEL_KEYS}})
    per_fold = pd.DataFrame(rows)
    per_fold.to_csv(out / CV_FOLDS_FILE, index=False)
    columns = [c for c in per_fold.columns if c != "fold"]
    result = {"classes": classes, "folds": rows,
              "mean": {c: round(float(per_fold[c].mean()), 4) for c in columns},
              "std": {c: round(float(per_fold[c].std(ddof=1)) if len(per_fold) > 1 else 0.0, 4) for c in columns}}
    write_text_atomic(out / METRICS_FILE, json.dumps(result, indent=2) + "\n")
    return result
