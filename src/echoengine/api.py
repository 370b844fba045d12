"""The Python API: what every ``echoengine`` command does, as functions that return results.

Each function takes a data source (a path) or a bundle (a path, or what
:func:`load_bundle` returns) and an :class:`~echoengine.config.EchoConfig`,
writes what the command writes, and returns a result object. Nothing is
printed: progress bars appear with ``progress=True``, and messages go to
``log`` (default: the ``echoengine`` logger at INFO level) and warnings to
the ``echoengine`` logger. The command line is a thin layer over these
functions, so a notebook, a server or a distributed run gets exactly what
the command gets.

Examples
--------
>>> import echoengine as ee  # doctest: +SKIP
>>> run = ee.train("recordings/", out="frogs-model", config=ee.EchoConfig().replace(
...     model={"embedder": "birdnet"}))  # doctest: +SKIP
>>> run.metrics["accuracy"]  # doctest: +SKIP
0.93
>>> ee.predict("frogs-model", ["night.wav"]).table  # doctest: +SKIP
>>> ee.detect("frogs-model", ["field/"], out="detections").events.head()  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import photos, sources
from echoengine.builtin import builtin_bundle, builtin_source, builtin_spec, write_builtin
from echoengine.config import EchoConfig
from echoengine.detection import DetectOptions, summarize
from echoengine.detection import detect as _detect
from echoengine.errors import EchoError
from echoengine.layout import (
    METRICS_FILE,
    Bundle,
    BundleFiles,
    find_bundles,
    prepare_output,
    read_bundle,
)
from echoengine.occurrence import Place, class_weights, expected_species
from echoengine.photoscore import predict_photos
from echoengine.predicted import PredictResult
from echoengine.raydetect import RayOptions, detect_on_ray
from echoengine.scoring import predict_files
from echoengine.taxonomy import bundle_taxonomy
from echoengine.thresholds import load_thresholds, write_thresholds

# Training, evaluation and export run in PyTorch, imported by the functions that need it: torch is not part of
# the serving runtime (``pip install echoengine[serve]``), where predict and detect run the exported graphs.

__all__ = ["CrossValidationResult", "DetectResult", "EvaluateResult", "ExportResult", "Place", "PredictResult",
           "builtin_source", "calibrate", "cross_validate", "detect", "embed", "evaluate", "export", "load_bundle",
           "load_bundles", "predict", "read_bundles", "species", "train", "use_onnx"]

logger = logging.getLogger("echoengine")
Log = Callable[[str], None]
BundleLike = str | Path | Bundle | Sequence[Bundle]


def load_bundle(path: str | Path, *, device: str = "cpu") -> Bundle:
    """A trained bundle: its config, classes and model, read without running code from the file."""
    from echoengine.bundle import load_bundle as load_with_model  # torch

    return load_with_model(path, device=device)


def load_bundles(source: BundleLike, *, device: str = "cpu", onnx: bool = False) -> list[Bundle]:
    """The models behind ``source``: one bundle, or every fold bundle of a cross-validation run (an ensemble).

    With ``onnx``, the bundles are read without their PyTorch models (no
    torch needed): their exported graphs score instead. The name of a
    built-in (``"birdnet"``, :mod:`echoengine.builtin`) gives it, in PyTorch.
    """
    if isinstance(source, Bundle):
        return [source]
    if not isinstance(source, (str, Path)):
        return list(source)
    spec = builtin_spec(source)
    if spec is not None:
        if onnx:
            raise EchoError(_builtin_graph(source))
        return [builtin_bundle(spec, device=device)]
    bundles = [read_bundle(folder) if onnx else load_bundle(folder, device=device) for folder in find_bundles(source)]
    if len(bundles) > 1:
        logger.info("ensemble of %d fold models from %s (probabilities averaged)", len(bundles), source)
    return bundles


def read_bundles(source: str | Path) -> list[Bundle]:
    """The bundles behind ``source`` (a bundle, a CV folder or a built-in's name), read without their models."""
    spec = builtin_spec(source)
    if spec is not None:
        return [builtin_bundle(spec, with_model=False)]
    return [read_bundle(folder) for folder in find_bundles(source)]


def _builtin_graph(source: str) -> str:
    name = source.partition("?")[0]
    return (f"{name}: the built-in runs in PyTorch (pip install -e '.[train,birdnet]' in echoengine's folder) and "
            f"has no exported graph; write it as a bundle with one (echoengine export {name} --out DIR --check "
            "FILE...) and run DIR with --onnx")


def use_onnx(source: BundleLike, onnx: bool = False) -> bool:
    """Whether to score with the exported graphs: when asked, or when torch is not installed (the serving runtime).

    Raises
    ------
    EchoError
        Torch is not installed and a bundle has no ``model.onnx``.
    """
    if builtin_spec(source) is not None:
        if onnx or importlib.util.find_spec("torch") is None:
            raise EchoError(_builtin_graph(source))
        return False
    if onnx or importlib.util.find_spec("torch") is not None or not isinstance(source, (str, Path)):
        return onnx
    missing = [folder for folder in find_bundles(source) if not BundleFiles(folder).onnx.is_file()]
    if missing:
        raise EchoError(f"{missing[0]}: torch is not installed and the bundle has no model.onnx; export it where "
                        "torch is (echoengine export), or install the train extra (pip install -e '.[train]' in "
                        "echoengine's folder)")
    logger.info("torch is not installed: scoring with the bundle's exported graph (model.onnx)")
    return True


def _folder(source: BundleLike) -> Path:
    """The folder that holds ``source``'s files (thresholds are written there); a built-in has none."""
    if builtin_spec(source) is not None or (isinstance(source, Bundle) and source.builtin is not None):
        raise EchoError("the built-in birdnet has no folder to write into: write it as a bundle first (echoengine "
                        "export birdnet --out DIR --check FILE...), then use DIR")
    if isinstance(source, (str, Path)):
        return Path(source)
    if isinstance(source, Bundle):
        return source.path
    raise TypeError("give the bundle as a path (or one loaded bundle) to write into its folder")


def _cache(config: EchoConfig, cache_dir: str | Path | None):
    """A FeatureCache at ``cache_dir``, or None."""
    if not cache_dir:
        return None
    from echoengine.cache import FeatureCache  # torch

    return FeatureCache(cache_dir, config)


def train(data: str | Path, *, config: EchoConfig | None = None, out: str | Path, resume: bool = False,
          overwrite: bool = False, finetune: bool = False, changes: dict | None = None,
          resume_changes: dict | None = None,
          annotations: str | Path | None = None, negatives: str | Path | None = None,
          columns: dict[str, str] | None = None, progress: bool = False, log: Log | None = None):
    """Train a model on a labelled dataset into the bundle folder ``out``, and test it on a held-out part.

    Parameters
    ----------
    data : str or Path
        A folder per class, a CSV or an ESC-50 folder; with
        ``config.model.multilabel``, recordings with annotation tables.
    config : EchoConfig, optional
        Defaults to ``EchoConfig()``; the training policy of
        :func:`echoengine.trainrun.training_config` is applied (BirdNET frozen unless
        ``finetune``), then ``changes`` (``{"section": {"key": value}}``),
        which win over the policy.
    out : str or Path
        The bundle folder: new or empty, unless ``resume`` or ``overwrite``.
    resume : bool
        Continue the interrupted run in ``out`` with its own config;
        ``resume_changes`` (e.g. ``{"train": {"epochs": 50}}``) may change
        what a resumed run may change.
    annotations, negatives, columns
        Multi-label training: the annotation tables (default: beside the
        audio), verified negatives, and the tables' column names.

    Returns
    -------
    echoengine.trainrun.TrainResult
        The bundle folder, the held-out metrics and the report text; None
        on ranks other than 0 of a run across processes (:mod:`echoengine.ddp`).
    """
    from echoengine import ddp  # torch
    from echoengine.trainrun import train_run, training_config

    config = photos.for_data(training_config(config or EchoConfig(), finetune=finetune, changes=changes), data,
                             log=log)
    if ddp.world() > 1 and config.convex_head():
        raise EchoError("a linear or MLP head on embeddings is fitted full-batch in seconds on one process: train "
                        "it without --distributed (or torchrun)")
    if ddp.is_main():
        prepare_output(out, resume=resume, overwrite=overwrite)
    ddp.barrier()
    boxes_source = {"annotations": annotations, "negatives": negatives, "columns": columns}
    return train_run(Path(data), config, Path(out), resume=resume, resume_changes=resume_changes,
                     boxes_source=boxes_source, progress=progress, log=log or logger.info)


@dataclass
class CrossValidationResult:
    """A k-fold cross-validation: the run folder (fold bundles, ``metrics.json``) and the summary.

    ``summary`` holds ``mean``, ``std`` and the per-fold metrics (``folds``).
    """

    out: Path
    summary: dict
    multilabel: bool = False

    def table(self) -> pd.DataFrame:
        """The metrics, one row each: mean, std and the value of every fold."""
        rows = [{"metric": key, "mean": mean, "std": self.summary["std"][key],
                 **{f"fold{i}": fold[key] for i, fold in enumerate(self.summary["folds"])}}
                for key, mean in self.summary["mean"].items()]
        return pd.DataFrame(rows)


def cross_validate(data: str | Path, *, config: EchoConfig | None = None, out: str | Path,
                   folds: int | None = None, resume: bool = False, overwrite: bool = False,
                   finetune: bool = False, changes: dict | None = None, annotations: str | Path | None = None,
                   negatives: str | Path | None = None, columns: dict[str, str] | None = None,
                   progress: bool = False, log: Log | None = None) -> CrossValidationResult:
    """Train and test one model per fold (grouped by source recording) and summarise them.

    ``folds`` overrides ``config.data.folds``; ``config``, ``finetune`` and
    ``changes`` are those of :func:`train`. The fold bundles in ``out``
    predict together as an ensemble (:func:`predict` with ``out``).
    """
    from echoengine.crossval import cross_validate as cross_validate_table  # torch
    from echoengine.hierfit import bundle_taxonomy_config, check_hierarchy, dataset_taxonomy
    from echoengine.labelkind import label_kind
    from echoengine.trainrun import training_config

    config = photos.for_data(training_config(config or EchoConfig(), finetune=finetune, changes=changes), data,
                             log=log)
    if folds is not None:
        config = config.replace(data={"folds": folds})
    check_hierarchy(config)
    prepare_output(out, resume=resume, overwrite=overwrite)
    kind = label_kind(multilabel=config.model.multilabel)
    boxes_source = {"annotations": annotations, "negatives": negatives, "columns": columns}
    usable, boxes = kind.read(data, config, boxes_source=boxes_source, progress=progress)
    taxonomy = dataset_taxonomy(data, config)
    config = bundle_taxonomy_config(config, taxonomy)
    summary = cross_validate_table(usable, config, out, boxes=boxes, taxonomy=taxonomy, resume=resume,
                                   progress=progress, log=log or logger.info)
    return CrossValidationResult(Path(out), summary, multilabel=kind.multilabel)


@dataclass
class EvaluateResult:
    """Metrics of a model on a labelled dataset, the folder of its report, and how many files it had seen."""

    metrics: dict
    out: Path
    files_seen_in_training: int = 0
    report: str = ""
    multilabel: bool = False


def _reading_config(bundle: Bundle, data_options: dict | None) -> EchoConfig:
    """The config a bundle reads labelled data with: its own, ``data_options`` applied, its taxonomy its file's."""
    config = bundle.config.replace(data=data_options or {})
    if config.taxonomy.source not in ("", "folders"):  # "taxonomy.csv": the bundle's own, never a path it names
        config = config.replace(taxonomy={"source": str(BundleFiles(bundle.path).taxonomy)})
    return config


def _warn_seen(bundles: Sequence[Bundle], table: pd.DataFrame, consequence: str) -> int:
    seen = sources.seen_in_training(bundles, table)
    if seen:
        logger.warning("%d of these %d files were used to train or select the model; %s", seen, len(table),
                       consequence)
    return seen


def evaluate(bundle: BundleLike, data: str | Path, *, out: str | Path | None = None, overwrite: bool = False,
             data_options: dict | None = None, cache_dir: str | Path | None = None,
             annotations: str | Path | None = None, negatives: str | Path | None = None,
             columns: dict[str, str] | None = None, progress: bool = False) -> EvaluateResult:
    """Score a bundle (or a fold ensemble) on a labelled dataset and write its report.

    Parameters
    ----------
    out : str or Path, optional
        Where the report goes (default: ``evaluate-<data>`` inside the bundle).
    data_options : dict, optional
        ``[data]`` settings of this dataset (e.g. ``{"group_regex": ...}``).
    cache_dir : str or Path, optional
        A feature cache folder (default: none).
    """
    from echoengine.evaluation import evaluate as evaluate_table  # torch
    from echoengine.evaluation import format_report, write_report
    from echoengine.labelkind import label_kind

    bundles = load_bundles(bundle)
    config = _reading_config(bundles[0], data_options)
    folder = _folder(bundle) if isinstance(bundle, (str, Path, Bundle)) else bundles[0].path
    out = prepare_output(out or folder / f"evaluate-{Path(data).stem}", overwrite=overwrite, markers=(METRICS_FILE,))
    kind = label_kind(multilabel=config.model.multilabel)
    boxes_source = {"annotations": annotations, "negatives": negatives, "columns": columns}
    usable, boxes = kind.read(data, config, boxes_source=boxes_source, progress=progress)
    seen = _warn_seen(bundles, usable, "their scores are optimistic")
    thresholds = load_thresholds(folder, bundles[0].classes) if kind.thresholded else None  # calibrate's, else 0.5
    metrics, _ = evaluate_table(bundles, usable, boxes=boxes, thresholds=thresholds, cache=_cache(config, cache_dir),
                           progress=progress)
    metrics.update(kind.evaluation_notes(evaluated_on=str(data), seen=seen))
    single = len(bundles) == 1 and bundles[0].files.history.is_file()
    history = pd.read_csv(bundles[0].files.history) if single else None
    write_report(metrics, bundles[0].classes, out, kind=kind, history=history)
    return EvaluateResult(metrics, out, seen, format_report(metrics, kind=kind), multilabel=kind.multilabel)


@dataclass
class CalibrationResult:
    """Per-class thresholds chosen on a labelled dataset, and the file they were written to."""

    thresholds: pd.DataFrame
    path: Path
    files: int


def calibrate(bundle: str | Path | Bundle, data: str | Path, *, data_options: dict | None = None,
              cache_dir: str | Path | None = None, annotations: str | Path | None = None,
              negatives: str | Path | None = None, columns: dict[str, str] | None = None,
              progress: bool = False) -> CalibrationResult:
    """Choose each class's F1-optimal threshold on a labelled dataset and write it into the bundle folder.

    ``detect`` then uses these thresholds unless it is given one.
    """
    from echoengine.evaluation import calibrate as calibrate_table  # torch
    from echoengine.labelkind import label_kind

    folder = _folder(bundle)
    bundles = load_bundles(bundle)
    config = _reading_config(bundles[0], data_options)
    boxes_source = {"annotations": annotations, "negatives": negatives, "columns": columns}
    usable, boxes = label_kind(multilabel=config.model.multilabel).read(data, config, boxes_source=boxes_source,
                                                                         progress=progress)
    _warn_seen(bundles, usable, "thresholds chosen on them are optimistic")
    thresholds = calibrate_table(bundles, usable, boxes=boxes, cache=_cache(config, cache_dir), progress=progress)
    path = write_thresholds(folder, thresholds)  # records the weights it was calibrated on
    return CalibrationResult(thresholds, path, len(usable))


def predict(bundle: BundleLike, files: Sequence[str | Path], *, onnx: bool = False,
            cache_dir: str | Path | None = None, progress: bool | None = False,
            place: Place | None = None, min_confidence: float = 0.0) -> PredictResult:
    """The class probabilities of each audio file (any length, read in bounded memory), or photo for a photo bundle.

    Folders among ``files`` are searched for files of the bundle's extensions;
    files of the other data kind than the bundle's (photos for an audio model,
    audio for a photo model) are refused with an EchoError.
    A file that cannot be read is listed in ``errors`` and the others go on.
    ``progress=None`` shows a progress bar when there are more than 20 files.
    With ``onnx``, each bundle's exported graph scores (no torch needed;
    the default where torch is not installed). With a ``place`` (BirdNET's
    species: the built-in ``"birdnet"``), the species not expected there and
    then (:mod:`echoengine.occurrence`) get probability 0, and those an
    occurrence table down-weights their probability times the weight. A model of a
    taxonomy gives each file its lineage, and ``min_confidence`` names the
    deepest rank whose probability reaches it (:class:`PredictResult`).
    """
    if not 0.0 <= min_confidence <= 1.0:
        raise EchoError(f"--min-confidence must be a probability in [0, 1], got {min_confidence}")
    onnx = use_onnx(bundle, onnx)
    bundles = load_bundles(bundle, onnx=onnx)
    config, classes = bundles[0].config, bundles[0].classes
    taxonomy = bundle_taxonomy(bundles[0])
    if min_confidence and taxonomy is None:
        logger.warning("--min-confidence: %s has no taxonomy (taxonomy.csv), so each file is named by its label",
                       _name(bundle))
    found = partial(PredictResult, classes=classes, taxonomy=taxonomy, min_confidence=min_confidence)
    weights = class_weights(classes, place, model=_name(bundle)) if place else None
    paths = sources.audio_files(files, config.data.extensions)
    photos.check_kind(config, paths, model=_name(bundle))
    if not paths:  # folders of the other kind's files only: say so
        for source in files:
            photos.refuse_other_kind(config, source)
    table = pd.DataFrame({"path": [str(f.resolve()) for f in paths], "label": "", "group": [f.stem for f in paths]})
    usable, errors = sources.scan(table, config, on_error="ignore")
    messages = [str(error) for error in errors]
    empty = np.zeros((0, len(classes)))
    if not len(usable):
        return found(pd.DataFrame(columns=["file", "species", "probability"]), empty, errors=messages)
    progress = len(usable) > 20 if progress is None else progress
    score = predict_photos if config.data.photos else predict_files
    probabilities = score(bundles, usable["path"].tolist(), onnx=onnx,
                          cache=None if onnx else _cache(config, cache_dir), progress=progress,
                          log=lambda line: messages.append(line.removeprefix("error: ")))
    readable = ~np.isnan(probabilities).any(axis=1)  # the others were reported by predict_files
    probabilities = probabilities[readable]
    if weights is not None:
        probabilities = probabilities * weights
    best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
    out = pd.DataFrame({"file": usable["path"].to_numpy()[readable], "species": [classes[i] for i in best],
                        "probability": probabilities[np.arange(len(best)), best]})
    return found(out, probabilities, errors=messages)


@dataclass
class DetectResult:
    """Events found in field recordings, the files that could not be read, and every file written."""

    events: pd.DataFrame
    errors: pd.DataFrame
    written: dict[str, Path]
    out: Path
    summary: pd.DataFrame | None = None
    summary_text: str = ""


def detect(bundle: BundleLike, paths: Sequence[str | Path], *, out: str | Path, resume: bool = False,
           overwrite: bool = False, summary: bool = False, progress: bool = False, log: Log | None = None,
           engine: str = "local", ray_options: RayOptions | None = None, place: Place | None = None,
           **options) -> DetectResult:
    """Score every window of every recording and write the events (CSV, Raven, Audacity, JSON lines).

    ``options`` are those of :class:`echoengine.detection.DetectOptions`
    (``overlap``, ``threshold``, ``top_n``, ``include``, ``exclude``,
    ``merge_gap``, ``onnx``, ...). ``summary`` also writes ``summary.csv`` and
    ``summary.png`` (detections per species and hour), returned as ``summary``
    with its printed form in ``summary_text``. ``engine="ray"`` scores the
    files on Ray (:mod:`echoengine.raydetect`; ``ray_options`` says where),
    with the same records and outputs. With a ``place`` (BirdNET's species:
    the built-in ``"birdnet"``), the species not expected there and then
    (:mod:`echoengine.occurrence`) are excluded from the events, and those an
    occurrence table down-weights there have their events' scores multiplied
    by the weight (:func:`echoengine.events.weigh_events`).
    """
    if engine not in ("local", "ray"):
        raise EchoError(f"--engine must be local or ray, got {engine!r}")
    options["onnx"] = onnx = use_onnx(bundle, bool(options.get("onnx")))
    run = _detect
    if engine == "ray":
        run = partial(detect_on_ray, ray_options=ray_options or RayOptions())
    bundles = load_bundles(bundle, onnx=onnx)
    photos.refuse_photo_model(bundles[0].config, _name(bundle))
    if options.get("min_confidence") and bundle_taxonomy(bundles[0]) is None:
        logger.warning("--min-confidence: %s has no taxonomy (taxonomy.csv); events name their labels alone",
                       _name(bundle))
    if place is not None:
        classes = bundles[0].classes
        weights = class_weights(classes, place, model=_name(bundle))
        absent = [name for name, weight in zip(classes, weights, strict=True) if weight == 0]
        options["exclude"] = tuple(dict.fromkeys([*options.get("exclude", ()), *absent]))
        options["weights"] = tuple((name, float(w)) for name, w in zip(classes, weights, strict=True) if 0 < w < 1)
    written = run(bundles, paths, out, options=DetectOptions(**options), resume=resume,
                  overwrite=overwrite, progress=progress, log=log or logger.info)
    lines: list[str] = []
    table = summarize(out, log=lines.append) if summary else None
    return DetectResult(pd.read_csv(written["events.csv"]), pd.read_csv(written["errors.csv"]), written, Path(out),
                        table, "\n".join(lines))


def embed(data: str | Path, *, config: EchoConfig | None = None, cache_dir: str | Path, engine: str = "local",
          ray_options: RayOptions | None = None, progress: bool = False, log: Log | None = None,
          changes: dict | None = None):
    """Compute the embeddings training a head on ``config.model.embedder`` needs into the cache at ``cache_dir``.

    ``engine="ray"`` computes them on Ray (:mod:`echoengine.rayembed`);
    :func:`train` with the same config, ``changes`` and cache then finds them
    all (the same policy applies: BirdNET's 2x view unless the changes say otherwise).

    Returns
    -------
    echoengine.rayembed.EmbedResult
        Clip embeddings computed, found cached, and unreadable.
    """
    if engine not in ("local", "ray"):
        raise EchoError(f"--engine must be local or ray, got {engine!r}")
    from echoengine.rayembed import embed_dataset  # torch
    from echoengine.trainrun import training_config

    config = training_config(config or EchoConfig(), changes=changes)
    return embed_dataset(data, config, cache_dir=cache_dir, engine=engine, ray_options=ray_options,
                         progress=progress, log=log or logger.info)


@dataclass
class ExportResult:
    """One exported ONNX graph and its largest probability difference from PyTorch on the check files."""

    path: Path
    difference: float


def export(bundle: str | Path, *, check: Sequence[str | Path] = (), out: str | Path | None = None,
           overwrite: bool = False) -> list[ExportResult]:
    """Export the bundle (each fold bundle of a cross-validation run) to ONNX, checked against PyTorch.

    A built-in (``"birdnet"``) has no folder: it is written as a bundle into
    ``out`` (new or empty, unless ``overwrite``; see
    :func:`echoengine.builtin.write_builtin`), and its graph goes there.
    """
    from echoengine.exporting import export_onnx  # torch

    spec = builtin_spec(bundle)
    if spec is None and out is not None:
        raise EchoError(f"--out is for a built-in (birdnet); {bundle}'s graph goes into its folder (model.onnx)")
    if spec is not None:
        if out is None or not check:
            raise EchoError(f"export {bundle} writes the built-in as a bundle folder with its graph: give --out DIR "
                            "(new or empty) and --check FILE... (recordings to check the graph on)")
        bundle = write_builtin(spec, out, overwrite=overwrite)
    return [ExportResult(*export_onnx(folder, check=check)) for folder in find_bundles(bundle)]


def species(place: Place) -> pd.DataFrame:
    """The species BirdNET's occurrence model expects at ``place`` (BirdNET-Analyzer's ``species`` list).

    Returns
    -------
    DataFrame
        ``label`` (``Scientific name_Common name``, the built-in's class),
        ``scientific_name``, ``common_name``, ``score``; best first.
    """
    return expected_species(place)


def _name(source: BundleLike) -> str:
    """How messages name a bundle source."""
    return str(source.path if isinstance(source, Bundle) else source if isinstance(source, (str, Path)) else "model")
