"""A training run in a bundle folder: scan, split, fit, test on the held-out part, report.

The library side of ``echoengine train`` (and of :func:`echoengine.api.train`):
the dataset is scanned, split into train / validation / test parts grouped by
source recording (``splits.csv``; multi-label runs also keep their
``annotations.csv``), the model is fitted (:func:`echoengine.training.fit_and_refit`),
tested on the held-out part, and the report is written beside the weights.
A resumed run reads its split and config back from the folder.

Examples
--------
>>> result = train_run(Path("data"), EchoConfig(), Path("bundle"), log=print)  # doctest: +SKIP
>>> result.metrics["accuracy"]  # doctest: +SKIP
0.91
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import catalog, sources
from echoengine.bundle import ANNOTATIONS_FILE, CONFIG_FILE, SPLITS_FILE, Bundle, read_classes, selection_history
from echoengine.cache import feature_cache
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.evaluation import evaluate, evaluate_multilabel, format_report, write_multilabel_report, write_report
from echoengine.kinds import KINDS, backbone_kind
from echoengine.training import fit_and_refit

__all__ = ["TrainResult", "train_run", "training_config"]

logger = logging.getLogger("echoengine")


@dataclass
class TrainResult:
    """A trained bundle: its folder, classes, metrics on the held-out part and the report text."""

    bundle: Path
    classes: list[str]
    metrics: dict
    held_out: str
    report: str


def training_config(config: EchoConfig, *, finetune: bool = False, changes: dict | None = None) -> EchoConfig:
    """The config a training run uses: the policy for BirdNET, then the ``changes`` asked for.

    BirdNET as a backbone stays frozen unless ``finetune``; fine-tuning
    trains it at 0.1x the head's learning rate from an L-BFGS linear probe.
    ``changes`` (``{"section": {"key": value}}``, e.g. from command-line
    options) are applied after the policy, so they win over it.

    Examples
    --------
    >>> training_config(EchoConfig(), changes={"model": {"backbone": "birdnet"}}).train.freeze_backbone
    True
    """
    changes = changes or {}
    backbone = changes.get("model", {}).get("backbone") or config.model.backbone
    kind = backbone_kind(backbone)  # None for an unknown name: the changes' validation says so below
    if finetune:
        if kind is None or not kind.finetunes:
            names = " or ".join(name for k in KINDS.values() if k.finetunes for name in k.backbones)
            raise EchoError(f"--finetune fine-tunes a pretrained backbone: use it with --backbone {names}")
        head = {"head": "linear"} if config.model.head == "auto" else {}  # warm-started from an L-BFGS probe
        config = config.replace(model=head, train={"backbone_lr_factor": 0.1, "freeze_backbone": False,
                                                   "probe_epochs": config.train.probe_epochs or 1})
    elif kind is not None and kind.finetunes and not config.train.freeze_backbone:
        config = config.replace(train={"freeze_backbone": True})  # without finetune, BirdNET stays frozen
    return config.replace(**changes) if changes else config


def train_run(data: Path, config: EchoConfig, out: Path, *, resume: bool = False, resume_changes: dict | None = None,
              boxes_source: dict | None = None, progress: bool = False,
              log: Callable[[str], None] = print) -> TrainResult:
    """Train into ``out`` (prepared by :func:`echoengine.bundle.prepare_output`) and test on the held-out part.

    Multi-label when ``config.model.multilabel`` (or when the resumed run
    has an ``annotations.csv``); ``boxes_source`` then names the
    ``annotations``, ``negatives`` and ``columns`` of
    :func:`echoengine.sources.annotation_boxes`.
    """
    if resume:
        if not (out / CONFIG_FILE).is_file() or not (out / SPLITS_FILE).is_file():
            raise EchoError(f"{out}: nothing to resume (no {CONFIG_FILE} and {SPLITS_FILE})")
        config = EchoConfig.load(out / CONFIG_FILE).with_machine_settings(config).replace(**(resume_changes or {}))
    multilabel = config.model.multilabel or (resume and (out / ANNOTATIONS_FILE).is_file())
    if multilabel:
        return _train_multilabel(data, config, out, resume=resume, boxes_source=boxes_source or {},
                                 progress=progress, log=log)
    if resume:
        usable, parts = _resumed_split(out, config, progress=progress)
        classes = read_classes(out)
    else:
        usable, _ = sources.labelled_files(data, config, progress=progress)
        if not len(usable):
            raise EchoError(f"{data}: no usable audio files")
        val_fraction = 0.0 if config.convex_head() else config.data.val_fraction  # L-BFGS selects by inner CV
        parts = catalog.split(usable, val_fraction=val_fraction, test_fraction=config.data.test_fraction,
                              seed=config.data.split_seed, sparse_classes=config.data.sparse_classes)
        classes = catalog.class_names(usable[parts != "excluded"])
        _write_split(out, usable, parts)
    counts = _announce(config, classes, parts, log, kind="training", items="files")
    result = fit_and_refit(usable[parts == "train"], usable[parts == "val"], classes, config, out, resume=resume,
                           progress=progress, log=log)
    held_out = "test" if counts["test"] else "val"
    if held_out == "val" and config.train.refit:
        logger.warning("no test part, and --refit trained on the validation part: the scores below are not held out")
    bundle = Bundle(out, config, classes, result.model)
    metrics, _ = evaluate([bundle], usable[parts == held_out], cache=feature_cache(config))
    honest = held_out == "test" or not config.train.refit
    metrics.update(evaluated_on=f"{held_out} part of {data}" + ("" if honest else " (trained on: not held out)"),
                   best_epoch=result.best_epoch)
    write_report(metrics, classes, out, history=pd.read_csv(selection_history(out)), best_epoch=result.best_epoch)
    report = f"held-out {held_out} files (best epoch {result.best_epoch}):\n{format_report(metrics)}"
    return TrainResult(out, classes, metrics, held_out, report)


def _resumed_split(out: Path, config: EchoConfig, *, progress: bool) -> tuple[pd.DataFrame, np.ndarray]:
    splits = pd.read_csv(out / SPLITS_FILE, keep_default_na=False)
    usable, _ = catalog.scan(splits.drop(columns="part"), config.audio,
                             progress=sources.progress_bar("checking") if progress else None)
    return usable, splits.set_index("path").loc[usable["path"], "part"].to_numpy()


def _write_split(out: Path, usable: pd.DataFrame, parts: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    usable[["path", "label", "group"]].assign(part=parts).to_csv(out / SPLITS_FILE, index=False)


def _announce(config: EchoConfig, classes: list[str], parts: np.ndarray, log: Callable[[str], None], *, kind: str,
              items: str, extra: str = "") -> dict:
    counts = {part: int((parts == part).sum()) for part in ("train", "val", "test")}
    log(f"{kind} {config.model.embedder or config.model.backbone} + {config.model.head_name} head on "
        f"{len(classes)} classes{extra}: {counts['train']} train, {counts['val']} validation, {counts['test']} test "
        f"{items}")
    return counts


def _train_multilabel(data: Path, config: EchoConfig, out: Path, *, resume: bool, boxes_source: dict,
                      progress: bool, log: Callable[[str], None]) -> TrainResult:
    """Multi-label training on annotated recordings, evaluated per window and per recording on the test part."""
    if resume:
        usable, parts = _resumed_split(out, config, progress=False)
        boxes = pd.read_csv(out / ANNOTATIONS_FILE, keep_default_na=False, dtype={"label": str, "path": str})
        for column in ("start", "end", "low_freq", "high_freq"):  # empty cells: NaN, not ""
            boxes[column] = pd.to_numeric(boxes[column], errors="coerce")
        classes = read_classes(out)
    else:
        usable = sources.recordings(data, config, progress=progress)
        boxes = sources.annotation_boxes(data, **boxes_source)
        boxes = boxes[boxes["path"].isin(usable["path"])].reset_index(drop=True)
        classes = sorted(boxes.loc[boxes["positive"], "label"].unique())
        parts = catalog.split_groups(usable, val_fraction=config.data.val_fraction,
                                     test_fraction=config.data.test_fraction, seed=config.data.split_seed)
        _write_split(out, usable, parts)
        boxes.to_csv(out / ANNOTATIONS_FILE, index=False)
    counts = _announce(config, classes, parts, log, kind="multi-label training of", items="recordings",
                       extra=f", {int(boxes['positive'].sum())} boxes")
    result = fit_and_refit(usable[parts == "train"], usable[parts == "val"], classes, config, out, resume=resume,
                           progress=progress, log=log, boxes=boxes)
    held_out = "test" if counts["test"] else "val"
    bundle = Bundle(out, config, classes, result.model)
    metrics = evaluate_multilabel([bundle], usable[parts == held_out].reset_index(drop=True), boxes,
                                  cache=feature_cache(config))
    evaluated_on = f"{held_out} part of {data}"
    report = f"{evaluated_on}:\n" + write_multilabel_report(metrics, out, evaluated_on=evaluated_on)
    return TrainResult(out, classes, metrics, held_out, report)
