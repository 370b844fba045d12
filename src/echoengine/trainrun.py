"""A training run in a bundle folder: scan, split, fit, test on the held-out part, report.

The library side of ``echoengine train`` (and of :func:`echoengine.api.train`):
the dataset is scanned, split into train / validation / test parts grouped by
source recording (``splits.csv``; multi-label runs also keep their
``annotations.csv``), the model is fitted (:func:`echoengine.training.fit_and_refit`),
tested on the held-out part, and the report is written beside the weights.
A resumed run reads its split and config back from the folder. Single-label
and multi-label runs take this one path; their label kind
(:mod:`echoengine.labelkind`) reads, splits and scores the data.

Examples
--------
>>> result = train_run(Path("data"), EchoConfig(), Path("bundle"), log=print)  # doctest: +SKIP
>>> result.metrics["accuracy"]  # doctest: +SKIP
0.91
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import ddp, sources
from echoengine.cache import feature_cache
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.evaluation import evaluate, format_report, write_report
from echoengine.files import write_csv_atomic
from echoengine.hierfit import bundle_taxonomy_config, check_hierarchy, dataset_taxonomy, fit_model
from echoengine.kinds import KINDS, backbone_kind
from echoengine.labelkind import LabelKind, label_kind
from echoengine.layout import CONFIG_FILE, SPLITS_FILE, Bundle, BundleFiles, read_classes, selection_history
from echoengine.taxonomy import read_taxonomy

__all__ = ["TrainResult", "train_run", "training_config", "with_speed_view"]


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
    options) are applied after the policy, so they win over it. A per-node
    model of a taxonomy trains with balanced class weights unless
    ``changes`` set ``train.class_weights``.

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
    config = config.replace(**changes) if changes else config
    if config.taxonomy.hierarchy == "per-node" and "class_weights" not in changes.get("train", {}):
        config = config.replace(train={"class_weights": "balanced"})  # a node's children are rarely balanced
    return with_speed_view(config, changes)


def with_speed_view(config: EchoConfig, changes: dict | None = None) -> EchoConfig:
    """A head on BirdNET's embeddings also sees each window played twice as fast, unless asked otherwise.

    The 2x view (``model.birdnet_speeds = [1, 2]``) is the default for the
    ``birdnet`` embedder: on the ESC-50 subset and on every small set of
    ``bench/small_data.py`` it beat the windows alone (README, "Playback-speed
    views"). ``--birdnet-speeds 1`` (in ``changes``) keeps the windows
    alone; so does any other embedder or backbone, and a config whose
    speeds are not the dataclass default.

    >>> with_speed_view(EchoConfig().replace(model={"embedder": "birdnet"})).model.birdnet_speeds
    (1.0, 2.0)
    >>> with_speed_view(EchoConfig().replace(model={"embedder": "birdnet"}),
    ...                 {"model": {"birdnet_speeds": [1]}}).model.birdnet_speeds
    (1.0,)
    """
    asked = "birdnet_speeds" in (changes or {}).get("model", {})
    if config.model.embedder != "birdnet" or asked or config.model.birdnet_speeds != (1.0,):
        return config
    return config.replace(model={"birdnet_speeds": [1.0, 2.0]})


def train_run(data: Path, config: EchoConfig, out: Path, *, resume: bool = False, resume_changes: dict | None = None,
              boxes_source: dict | None = None, progress: bool = False,
              log: Callable[[str], None] = print) -> TrainResult | None:
    """Train into ``out`` (prepared by :func:`echoengine.layout.prepare_output`) and test on the held-out part.

    In a run across processes (:mod:`echoengine.ddp`) every rank trains and
    rank 0 alone writes and tests: the other ranks return None.

    Multi-label when ``config.model.multilabel`` (or when the resumed run
    has an ``annotations.csv``); ``boxes_source`` then names the
    ``annotations``, ``negatives`` and ``columns`` of
    :func:`echoengine.sources.annotation_boxes`. What differs between the
    label kinds is asked of :class:`echoengine.labelkind.LabelKind`.

    Examples
    --------
    >>> train_run(Path("soundscapes"), EchoConfig().replace(model={"multilabel": True}),
    ...           Path("bundle")).metrics["recording"]["lwlrap"]  # doctest: +SKIP
    0.78
    """
    files = BundleFiles(out)
    if resume:
        if not files.config.is_file() or not files.splits.is_file():
            raise EchoError(f"{out}: nothing to resume (no {CONFIG_FILE} and {SPLITS_FILE})")
        config = EchoConfig.load(files.config).with_machine_settings(config).replace(**(resume_changes or {}))
    check_hierarchy(config)
    kind = label_kind(multilabel=config.model.multilabel or (resume and files.annotations.is_file()))
    if resume:
        usable, parts, boxes, classes = _resumed_split(out, config, kind, progress=progress)
        taxonomy = read_taxonomy(files.taxonomy) if config.taxonomy.uses_taxonomy else None
    else:
        usable, parts, boxes, classes = _new_split(data, config, out, kind, boxes_source or {}, progress=progress)
        taxonomy = dataset_taxonomy(data, config)
        config = bundle_taxonomy_config(config, taxonomy)
    counts = _announce(config, classes, parts, log, kind=kind, boxes=boxes)
    result = fit_model(usable[parts == "train"], usable[parts == "val"], classes, config, out, taxonomy=taxonomy,
                       resume=resume, progress=progress, log=log, boxes=boxes)
    if not ddp.is_main():
        return None
    held_out = "test" if counts["test"] else "val"
    notes, heading = kind.held_out_notes(part=held_out, data=data, refit=config.train.refit,
                                         best_epoch=result.best_epoch)
    bundle = Bundle(out, config, classes, result.model)
    metrics, _ = evaluate([bundle], usable[parts == held_out].reset_index(drop=True), boxes=boxes,
                          cache=feature_cache(config))
    metrics.update(notes)
    write_report(metrics, classes, out, kind=kind, history=pd.read_csv(selection_history(out)),
                 best_epoch=result.best_epoch)
    return TrainResult(out, classes, metrics, held_out, f"{heading}\n{format_report(metrics, kind=kind)}")


_Split = tuple[pd.DataFrame, np.ndarray, pd.DataFrame | None, list[str]]


def _new_split(data: Path, config: EchoConfig, out: Path, kind: LabelKind, boxes_source: dict, *,
               progress: bool) -> _Split:
    """Read the data, split it, and write the split (``splits.csv``, and a multi-label run's boxes)."""
    usable, boxes = kind.read(data, config, boxes_source=boxes_source, progress=progress)
    if not len(usable):
        raise EchoError(f"{data}: no usable {'images' if config.data.photos else 'audio files'}")
    parts = kind.split(usable, config)
    classes = kind.classes(usable[parts != "excluded"], boxes)
    if not ddp.is_main():  # the same split on every rank (it is seeded); rank 0 writes it
        return usable, parts, boxes, classes
    out.mkdir(parents=True, exist_ok=True)
    files = BundleFiles(out)
    write_csv_atomic(files.splits, usable[["path", "label", "group"]].assign(part=parts), index=False)
    if boxes is not None:
        write_csv_atomic(files.annotations, boxes, index=False)
    return usable, parts, boxes, classes


def _resumed_split(out: Path, config: EchoConfig, kind: LabelKind, *, progress: bool) -> _Split:
    """The split, boxes and classes a run saved in ``out``, its files checked again."""
    splits = pd.read_csv(BundleFiles(out).splits, keep_default_na=False)
    usable, _ = sources.scan(splits.drop(columns="part"), config,
                             progress=sources.progress_bar("checking") if progress else None)
    parts = splits.set_index("path").loc[usable["path"], "part"].to_numpy()
    return usable, parts, kind.saved_boxes(out), read_classes(out)


def _announce(config: EchoConfig, classes: list[str], parts: np.ndarray, log: Callable[[str], None], *,
              kind: LabelKind, boxes: pd.DataFrame | None) -> dict:
    counts = {part: int((parts == part).sum()) for part in ("train", "val", "test")}
    log(f"{kind.training} {config.model.embedder or config.model.backbone} + {config.model.head_name} head on "
        f"{len(classes)} classes{kind.boxes_note(boxes)}: {counts['train']} train, {counts['val']} validation, "
        f"{counts['test']} test {kind.items}")
    return counts
