"""The ``echoengine`` command: thin wiring over the Python API (:mod:`echoengine.api`).

Each subcommand parses its arguments, builds the config, calls the library
once and prints. Bad input ends in a one-line ``error:`` message, never a
traceback. The library (and with it torch, pandas and numpy) is imported
inside the commands that use it, so that ``echoengine --help`` and a typo's
usage message come back at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from echoengine import runtime
from echoengine.cli_options import (
    BUNDLE_THRESHOLDS,
    DEFAULT_CACHE,
    INHERITED,
    build_parser,
    config_changes,
    config_options,
    parse,
)
from echoengine.config import MACHINE_SETTINGS, EchoConfig
from echoengine.errors import EchoError
from echoengine.files import write_csv_atomic

if TYPE_CHECKING:
    import pandas as pd

    from echoengine.errors import AudioError

__all__ = ["build_parser", "main", "parse", "run"]


def _config(args: argparse.Namespace) -> EchoConfig:
    """The ``--config`` file (or the defaults) with the config options given on the command line."""
    config = EchoConfig.load(args.config) if getattr(args, "config", None) else EchoConfig()
    changes = config_changes(args)
    return config.replace(**changes) if changes else config


def _training_options(args: argparse.Namespace) -> tuple[EchoConfig, dict[str, dict]]:
    """The config file (or defaults) and the changes the command line asks for, applied after the training policy."""
    config = EchoConfig.load(args.config) if args.config else EchoConfig()
    changes = config_changes(args)
    if args.no_cache:
        changes.setdefault("data", {})["cache_dir"] = ""
    elif args.cache_dir or not config.data.cache_dir:
        changes.setdefault("data", {})["cache_dir"] = str(args.cache_dir or DEFAULT_CACHE)
    return config, changes


def _refuse_existing(path: Path, overwrite: bool) -> None:
    """A file the user names as output (often edited by hand since) is replaced only when they say so."""
    if path.exists() and not overwrite:
        raise EchoError(f"{path}: already exists; pass --overwrite to replace it, or choose another --out")


def _refuse_nonempty(folder: Path, overwrite: bool) -> None:
    """Files are written into a folder that holds others only when the user says so (same names are replaced)."""
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise EchoError(f"{folder}: not empty; pass --overwrite to write into it anyway (files of the same names "
                        "are replaced), or choose another folder")


def _scan(data: Path, config: EchoConfig, *, on_error: str = "warn",
          progress: bool = True) -> tuple[pd.DataFrame, list[AudioError]]:
    from echoengine.sources import labelled_files

    return labelled_files(data, config, on_error=on_error, progress=progress)


def cmd_inspect(args: argparse.Namespace) -> int:
    """``echoengine inspect``: the dataset's classes, files, durations (photos: sizes) and unreadable files; 1 if
    none is usable."""
    from echoengine import catalog, photos
    from echoengine.sources import labels_table

    config = photos.for_data(_config(args), args.data, log=lambda line: None)
    usable, errors = _scan(args.data, config, on_error="ignore")  # listed in the report below
    describe = photos.describe if config.data.photos else catalog.describe
    report, warning = describe(usable, errors, name=str(args.data))
    print(report)
    taxonomy = labels_table(args.data, config)[1] if len(usable) else None
    if taxonomy is not None:
        units = ("image", "group") if config.data.photos else ("file", "recording")  # as the report above says
        print(f"\ntaxonomy ({' > '.join(taxonomy.all_ranks)}):\n{taxonomy.tree_text(usable, units)}")
    if warning:
        print(f"\nwarning: {warning}", file=sys.stderr)
    if not len(usable):
        print(f"error: no usable {'images' if config.data.photos else 'audio files'}", file=sys.stderr)
        return 1
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """``echoengine preview``: a grid of the model inputs of files drawn from the dataset."""
    if args.n < 1:
        raise EchoError(f"--n must be at least 1, got {args.n}")
    from echoengine import catalog
    from echoengine.dataset import preview_inputs
    from echoengine.plots import plot_images

    config = _config(args)
    _refuse_existing(args.out if args.out.suffix else args.out.with_suffix(".png"), args.overwrite)
    usable, _ = _scan(args.data, config)
    shown = preview_inputs(usable, catalog.class_names(usable), config, n=args.n, augment=args.augment,
                           seed=args.seed) if len(usable) else None
    if shown is None:
        print("error: no usable audio files", file=sys.stderr)
        return 1
    images, titles = shown
    what = "augmented training variants" if args.augment else "clean first windows"
    out = plot_images(images[:, 0].numpy(), titles, args.out, clip_seconds=config.audio.clip_seconds,
                      suptitle=f"model inputs ({what}), {tuple(images.shape[1:])} each, drawn time x frequency")
    print(f"wrote {out} ({len(images)} model inputs of {args.data})")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """``echoengine split``: train/val/test parts (or k folds) of the dataset, grouped by recording, as a CSV."""
    import numpy as np

    from echoengine import photos, splits

    config = photos.for_data(_config(args), args.data, log=lambda line: None)
    data = config.data
    _refuse_existing(args.out, args.overwrite)
    usable, _ = _scan(args.data, config)
    if args.kfold:
        parts = splits.kfold(usable, folds=data.folds, seed=data.split_seed, sparse_classes=data.sparse_classes)
        part_names = np.where(parts >= 0, np.char.add("fold", parts.astype(str)),
                              np.where(parts == splits.TRAIN_ONLY, "train", "excluded"))
    else:
        part_names = splits.split(usable, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                                   seed=data.split_seed, sparse_classes=data.sparse_classes)
    table = usable[["path", "label", "group"]].assign(part=part_names)
    write_csv_atomic(args.out, table, index=False)
    counts = table.groupby("part").agg(files=("path", "size"), classes=("label", "nunique"),
                                       recordings=("group", "nunique"))
    print(counts.to_string())
    print(f"wrote {args.out} ({len(table)} files; no source recording is in two parts)")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _boxes_options(args: argparse.Namespace) -> dict:
    """The annotation options of a multi-label command, as the API takes them."""
    from echoengine.sources import parse_columns

    return {"annotations": getattr(args, "annotations", None), "negatives": getattr(args, "negatives", None),
            "columns": parse_columns(getattr(args, "columns", None))}


def cmd_train(args: argparse.Namespace) -> int:
    """``echoengine train``: a bundle trained on the dataset (or a resumed run), and its held-out report."""
    from echoengine import api

    if args.resume:  # a resumed run keeps its own config, but for its epochs and this machine's settings
        ignored = [option.flag for option in config_options("train") if getattr(args, option.dest) not in (None, False)
                   and f"{option.section}.{option.name}" not in (*MACHINE_SETTINGS, "train.epochs")]
        ignored += ["--config"] if args.config else []
        if ignored:
            print(f"warning: --resume continues with the run's own config; ignored: {', '.join(sorted(ignored))}",
                  file=sys.stderr)
    config, changes = _training_options(args)
    if args.distributed and args.distributed > 1:
        return _launch_training(args, config.replace(**changes) if changes else config)
    # a resumed run keeps its own config; only these (and this machine's settings) may be given again
    given = {key: value for key, value in {"epochs": args.epochs, "device": args.device}.items() if value is not None}
    resume_changes = {"train": given, "data": {} if args.workers is None else {"num_workers": args.workers}}
    from echoengine import ddp

    with ddp.process_group(os.environ, device=args.device or config.train.device):  # torchrun's processes: DDP
        main_rank = ddp.is_main()
        result = api.train(args.data, config=config, changes=changes, finetune=args.finetune, out=args.out,
                           resume=args.resume, overwrite=args.overwrite, resume_changes=resume_changes,
                           progress=not args.quiet and main_rank, log=_say if main_rank else _quiet,
                           **_boxes_options(args))
    if result is None:  # another rank than 0 of a run across processes: rank 0 reports
        return 0
    print(f"\n{result.report}")
    print(f"\nwrote the bundle {result.bundle} (metrics.json, plots/, history.csv; tensorboard --logdir "
          f"{result.bundle / 'tensorboard'})")
    return 0


def _quiet(line: str) -> None:
    return None


def _launch_training(args: argparse.Namespace, config: EchoConfig) -> int:
    """``echoengine train --distributed N``: the same command in N processes (torchrun), after checking ``--out``."""
    from echoengine import ddp
    from echoengine.layout import BundleFiles, prepare_output

    prepare_output(args.out, resume=args.resume, overwrite=args.overwrite)  # refused here, not in N processes
    if args.resume and BundleFiles(args.out).config.is_file():
        config = EchoConfig.load(BundleFiles(args.out).config)
    if config.data.batch_size % args.distributed:
        raise EchoError(f"data.batch_size {config.data.batch_size} must be a multiple of the {args.distributed} "
                        "training processes (each takes an equal part of every batch)")
    argv, skip = [], False
    for item in args.argv:
        if skip or item == "--distributed" or item.startswith("--distributed="):
            skip = item == "--distributed"
            continue
        argv.append(item)
    return ddp.launch(args.distributed, argv)


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """Where this command caches features: never where a bundle's config says (EchoConfig.portable)."""
    return None if getattr(args, "no_cache", False) else getattr(args, "cache_dir", None) or DEFAULT_CACHE


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``echoengine evaluate``: the bundle's (or ensemble's) report on labelled data."""
    from echoengine import api
    from echoengine.layout import BundleFiles

    result = api.evaluate(args.bundle, args.data, out=args.out, overwrite=args.overwrite,
                          data_options=config_changes(args).get("data"), cache_dir=_cache_dir(args), progress=True,
                          **_boxes_options(args))
    print(f"\n{args.data}:\n{result.report}")
    files = BundleFiles(result.out)
    written = f", {files.per_class_at('recording')}" if result.multilabel else ""
    print(f"\nwrote {files.metrics}{written} and {files.plots}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``echoengine calibrate``: per-class detection thresholds written beside the weights (from data or reviews)."""
    if args.reviews is not None:
        return _calibrate_from_reviews(args)
    given = [flag for flag, value in (("--db", args.db), ("--precision", args.precision),
                                      ("--min-reviews", args.min_reviews), ("--exclude", args.exclude),
                                      ("--top-n", args.top_n is not None), ("--overlap", args.overlap is not None))
             if value]
    if given:
        raise EchoError(f"{', '.join(given)} go with --reviews STORE|EXPORT (without it, thresholds are F1-optimal "
                        "on labelled DATA)")
    if args.data is None:
        raise EchoError("give labelled DATA, or --reviews STORE|EXPORT to fit thresholds on reviewed detections")
    from echoengine import api

    result = api.calibrate(args.bundle, args.data, data_options=config_changes(args).get("data"),
                           cache_dir=_cache_dir(args), progress=True, **_boxes_options(args))
    print(result.thresholds.round(3).to_string(index=False))
    print(f"\nwrote {result.path} (F1-optimal threshold per class over the windows of {result.files} files, for "
          "these weights); echoengine detect uses it unless --threshold is given")
    return 0


def _calibrate_from_reviews(args: argparse.Namespace) -> int:
    """``echoengine calibrate BUNDLE --reviews STORE|EXPORT``: thresholds for a target precision, from reviews."""
    from echoengine.service.reviewcal import DEFAULT_PRECISION, MIN_REVIEWS, calibrate_from_reviews

    if args.data is not None:
        raise EchoError(f"give DATA ({args.data}) or --reviews ({args.reviews}), not both")
    result = calibrate_from_reviews(args.bundle, args.reviews, db=args.db,
                                    precision=DEFAULT_PRECISION if args.precision is None else args.precision,
                                    min_reviews=MIN_REVIEWS if args.min_reviews is None else args.min_reviews,
                                    exclude=tuple(args.exclude or ()), overrides=_judged_overrides(args))
    print(result.text())
    kept = f"; the previous thresholds are kept in {result.previous}" if result.previous else ""
    print(f"\nwrote {result.path} from {result.events} reviewed detections ({result.left_out} left out: of "
          f"recordings the bundle trained on, or of --exclude exports){kept}\n{result.notes()}")
    return 0


def cmd_reviews(args: argparse.Namespace) -> int:
    """``echoengine reviews export|compare``: reviewed detections as training data, or as a test of two models."""
    if args.action == "export":
        from echoengine.service.export import export_reviews

        result = export_reviews(args.store, args.out, db=args.db, since=args.since, until=args.until,
                                with_data=args.with_data, group_regex=args.group_regex, overwrite=args.overwrite)
        print(result.text())
        return 0
    from echoengine.service.compare import compare_models

    comparison = compare_models(args.old, args.new, args.store, db=args.db, since=args.since, until=args.until,
                                exclude=tuple(args.exclude or ()), overrides=_judged_overrides(args))
    print(comparison.text())
    if args.out:
        write_csv_atomic(args.out, comparison.table.round(4), index=False)
        print(f"wrote {args.out}")
    return 0


def _scoring(args: argparse.Namespace) -> dict:
    """The scoring options of detect and serve, as :class:`echoengine.detection.DetectOptions` takes them."""
    from echoengine.sources import species_names

    threshold = None if args.threshold == BUNDLE_THRESHOLDS else args.threshold
    return {"overlap": args.overlap, "min_window": args.min_window, "threshold": threshold,
            "top_n": args.top_n, "include": tuple(species_names(args.species)),
            "exclude": tuple(species_names(args.exclude)), "merge_gap": args.merge_gap,
            "batch_size": args.batch_size, "onnx": args.onnx, **_location_filter(args)}


def _location_filter(args: argparse.Namespace) -> dict:
    """serve's ``--location-filter``: each recording's position and date filter its species."""
    from echoengine.occurrence import LOCATION_FILTER_THRESHOLD

    if not getattr(args, "location_filter", False):
        given = [flag for flag, value in (("--location-filter-threshold", args.location_filter_threshold),
                                          ("--occurrence", args.occurrence)) if value is not None]
        if given and args.command == "serve":
            raise EchoError(f"{', '.join(given)} go with --location-filter")
        return {}
    threshold = args.location_filter_threshold
    return {"location_filter": LOCATION_FILTER_THRESHOLD if threshold is None else threshold,
            "occurrence": str(args.occurrence or "")}


def _source(args: argparse.Namespace):
    """The bundle argument, with the built-in's ``--sensitivity`` written into its name."""
    from echoengine.builtin import builtin_source

    return builtin_source(args.bundle, sensitivity=args.sensitivity)


def _place(args: argparse.Namespace):
    """The place and season of ``--lat``, ``--lon``, ``--week`` or ``--date``; None without a position."""
    from echoengine.occurrence import Place

    return Place.of(lat=args.lat, lon=args.lon, week=args.week, date=args.date,
                    threshold=getattr(args, "location_filter_threshold", None),
                    occurrence=getattr(args, "occurrence", None), site=getattr(args, "site", None))


def cmd_detect(args: argparse.Namespace) -> int:
    """``echoengine detect``: events in long recordings, written as tables; a summary on request."""
    from echoengine import api

    ray_options = _ray_options(args, chunk_seconds=args.ray_chunk_seconds)
    result = api.detect(
        _source(args), args.paths, place=_place(args), out=args.out, resume=args.resume, overwrite=args.overwrite,
        summary=args.summary,
        progress=not args.quiet, log=lambda line: print(line, file=sys.stderr), workers=args.workers,
        engine=args.engine, ray_options=ray_options, jobs=args.jobs, min_confidence=args.min_confidence,
        keep_scores=args.keep_scores, **_scoring(args))
    events = result.events
    print(f"{len(events)} events in {events['file'].nunique()} files; wrote {args.out} "
          f"(events.csv, events.selections.txt, raven/, audacity/, events.jsonl, scores.parquet)")
    if len(result.errors):
        print(f"{len(result.errors)} file(s) could not be read: see {result.written['errors.csv']}", file=sys.stderr)
    if args.summary:
        print(result.summary_text)
        written = [path for path in (Path(args.out) / "summary.csv", Path(args.out) / "summary.png") if path.exists()]
        print("wrote " + " and ".join(map(str, written)))
    return 0


def _ray_options(args: argparse.Namespace, **settings):
    """The Ray options of detect and embed; refused without ``--engine ray``."""
    given = [flag for flag, value in (("--ray-address", args.ray_address), ("--ray-workers", args.ray_workers))
             if value is not None]
    if given and args.engine != "ray":
        raise EchoError(f"{', '.join(given)} go with --engine ray")
    from echoengine.raydetect import RayOptions

    return RayOptions(address=args.ray_address, workers=args.ray_workers, **settings)


def cmd_embed(args: argparse.Namespace) -> int:
    """``echoengine embed``: a head's embeddings of DATA computed into the feature cache, here or on Ray."""
    from echoengine import api

    if args.no_cache:
        raise EchoError("echoengine embed fills the feature cache: drop --no-cache")
    config, changes = _training_options(args)
    result = api.embed(args.data, config=config, changes=changes, cache_dir=_cache_dir(args), engine=args.engine,
                       ray_options=_ray_options(args), progress=not args.quiet,
                       log=lambda line: print(line, file=sys.stderr))
    print(f"{result.text()} in {_cache_dir(args)}; echoengine train with the same config and --cache-dir finds them")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """``echoengine serve``: the HTTP API and its worker until interrupted (:func:`echoengine.service.server.serve`)."""
    from echoengine.detection import DetectOptions
    from echoengine.service.server import serve

    given = [{"species": "include"}.get(name, name) for name in INHERITED if getattr(args, name) is not None]
    if args.location_filter:  # its threshold and table come with it, not from the active model
        given += ["location_filter", "occurrence"]
    for name in ("overlap", "min_window", "top_n", "merge_gap"):  # None in serve's parser when not given
        if getattr(args, name) is None:
            setattr(args, name, getattr(DetectOptions(), name))
    serve(_source(args), store=args.store, db=args.db, host=args.host, port=args.port,
          options=DetectOptions(**_scoring(args)), api_key_file=args.api_key_file, public_reads=args.public_reads,
          max_upload_mb=args.max_upload_mb, mqtt=args.mqtt, mqtt_out=args.mqtt_out, log_level=args.log_level,
          scoring_processes=args.scoring_processes, candidate=args.candidate, activate=args.activate, given=given)
    return 0


def _judged_overrides(args: argparse.Namespace) -> dict:
    """compare's and calibrate's --threshold, --top-n, --overlap as given (they replace what the store recorded)."""
    given = {name: getattr(args, name, None) for name in ("threshold", "top_n", "overlap")}
    given = {name: value for name, value in given.items() if value is not None}
    if "threshold" in given and given["threshold"] == BUNDLE_THRESHOLDS:
        given["threshold"] = None
    return given


def cmd_mix(args: argparse.Namespace) -> int:
    """``echoengine mix``: soundscapes with their Raven tables from labelled clips."""
    from echoengine.mix import mix_parts, mix_soundscapes
    from echoengine.sources import find_audio

    config = _config(args)
    _refuse_nonempty(args.out, args.overwrite)
    common = {"duration": args.duration, "events": args.events, "snr": args.snr,
              "config": config.audio, "seed": args.seed}
    backgrounds = find_audio(args.background) if args.background else []
    clips, _ = _scan(args.clips, config)
    if args.test_fraction:
        mix_parts(clips, args.out, count=args.count, backgrounds=backgrounds, test_fraction=args.test_fraction,
                  split_seed=args.split_seed, **common)
    else:
        boxes = mix_soundscapes(clips, args.out, count=args.count, backgrounds=backgrounds, **common)
        print(f"{args.count} soundscapes, {len(boxes)} events -> {args.out}")
    print("each NAME.flac has its Raven table NAME.selections.txt; train on them with --multilabel")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """``echoengine cv``: fold bundles of a grouped k-fold cross-validation, and the metrics' mean and std."""
    from echoengine import api
    from echoengine.baseline import BASELINE

    config, changes = _training_options(args)
    result = api.cross_validate(args.data, config=config, changes=changes, finetune=args.finetune, out=args.out,
                                resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, log=_say,
                                **_boxes_options(args))
    table = result.table()
    width = max([22 if result.multilabel else 18, *(len(name) + 2 for name in table["metric"])])
    print(f"\n{'metric':<{width}} {'mean':>7} {'std':>7}   per fold")
    for row in table.itertuples(index=False):
        per_fold = " ".join(f"{value:.3f}" for value in row[3:])
        print(f"{row.metric:<{width}} {row.mean:>7.4f} {row.std:>7.4f}   {per_fold}")
    if "baseline_accuracy" in result.summary["mean"]:
        print(f"(baseline_*: {BASELINE}, on the same folds)")
    pooled = result.summary.get("pooled_out_of_fold", {})
    if "taxonomy" in pooled:  # a model of a taxonomy: every rank of the pooled out-of-fold predictions
        from echoengine.rankmetrics import rank_text

        print(f"\npooled out-of-fold predictions, per rank:\n{rank_text(pooled['taxonomy'])}")
    what = "metrics.json, cv_folds.csv" + ("" if result.multilabel else ", plots/")
    print(f"\nwrote {args.out} (fold0..fold{len(result.summary['folds']) - 1} bundles, {what})"
          + ("" if result.multilabel else f"; predict with it as an ensemble: echoengine predict {args.out} FILE..."))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``echoengine predict``: each file's most probable species; 1 if no file could be read."""
    from echoengine import api

    if args.top_k < 1:
        raise EchoError(f"--top-k must be at least 1, got {args.top_k}")
    result = api.predict(_source(args), args.files, onnx=args.onnx, place=_place(args),
                         cache_dir=None if args.onnx else _cache_dir(args), progress=None,
                         min_confidence=args.min_confidence)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if not len(result.table):
        print("error: no file could be read", file=sys.stderr)
        return 1
    print(result.text(args.top_k, args.format))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``echoengine export``: ``model.onnx`` of the bundle (of each fold), checked against PyTorch."""
    from echoengine import api

    for exported in api.export(_source(args), check=args.check or (), out=args.out, overwrite=args.overwrite):
        print(f"wrote {exported.path} (checked against PyTorch: max probability difference "
              f"{exported.difference:.1e})")
    return 0


def cmd_species(args: argparse.Namespace) -> int:
    """``echoengine species``: the species BirdNET's occurrence model expects at a place and week."""
    from echoengine import api

    if args.out:
        _refuse_existing(args.out, args.overwrite)
    place = _place(args)
    table = api.species(place)
    when = "the whole year" if place.week == -1 else f"week {place.week} of 48"
    print(table[["score", "scientific_name", "common_name"]].round(4).to_string(index=False))
    print(f"\n{len(table)} species expected at {place.lat:g}, {place.lon:g} in {when} (occurrence score >= "
          f"{place.threshold:g})")
    if args.out:
        from echoengine.files import write_text_atomic

        write_text_atomic(args.out, "".join(f"{label}\n" for label in table["label"]))
        print(f"wrote {args.out} (one species a line: detect birdnet ... --species {args.out})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``echoengine demo``: the SYNTHETIC walk-through (:func:`echoengine.demo.run_demo`)."""
    from echoengine.demo import run_demo

    run_demo(args.out, epochs=args.epochs, files_per_class=args.files_per_class, lr=args.lr, seed=args.seed,
             progress=not args.quiet, say=_say)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """``echoengine synth``: a small SYNTHETIC dataset."""
    from echoengine import synthetic

    _refuse_nonempty(args.out, args.overwrite)
    root = synthetic.make_dataset(args.out, classes=args.classes, files_per_class=args.files_per_class, seed=args.seed)
    print(f"wrote a SYNTHETIC dataset of {args.classes} classes x {args.files_per_class} files to {root}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``echoengine config``: the configuration (the defaults, or the ``--config`` file's) as TOML."""
    config = _config(args)
    if args.out:
        _refuse_existing(args.out, args.overwrite)
        print(f"wrote {config.save(args.out)}")
    else:
        import tomli_w

        print(tomli_w.dumps(config.to_dict()), end="")
    return 0


def run() -> None:
    """The ``echoengine`` program: :func:`main`, then an exit without the interpreter's teardown after the
    commands whose every file is written and closed when they return (detect, predict): tearing down torch's
    modules takes 0.6-0.9 s, a tenth of a detect run over 20 minutes of audio."""
    code = main(exit_now=True)
    sys.exit(code)


def main(argv: list[str] | None = None, *, exit_now: bool = False) -> int:
    """Run the ``echoengine`` command line; the exit status: 0, 1 (nothing usable), 2 (bad input), 130 (interrupted).

    ``exit_now`` ends the process at once after a command of :data:`_EXIT_NOW`
    (:func:`echoengine.runtime.exit_now`), so only a program's own entry point passes it.
    """
    args = parse(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    runtime.log_to_stderr()
    runtime.keep_freed_memory()
    code = _run(args)
    if exit_now and args.command in _EXIT_NOW:
        runtime.exit_now(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.command](args)
    except EchoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # e.g. an output folder that does not exist
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"error: {detail}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency: say which extra installs it
        if (extra := runtime.extra_providing(exc.name)) is None:
            raise
        print(f"error: echoengine {args.command} needs {exc.name}, of the {extra} extra: pip install -e '.[{extra}]' "
              "in echoengine's folder", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


_EXIT_NOW = ("detect", "predict")  # their outputs are written whole and closed when the command returns
_COMMANDS = {"inspect": cmd_inspect, "preview": cmd_preview, "split": cmd_split, "train": cmd_train, "cv": cmd_cv,
             "evaluate": cmd_evaluate, "embed": cmd_embed, "calibrate": cmd_calibrate, "predict": cmd_predict,
             "export": cmd_export, "species": cmd_species,
             "detect": cmd_detect, "serve": cmd_serve, "mix": cmd_mix, "reviews": cmd_reviews, "demo": cmd_demo,
             "synth": cmd_synth, "config": cmd_config}

if __name__ == "__main__":
    run()
