"""The ``echoengine`` command: thin wiring over the Python API (:mod:`echoengine.api`).

Each subcommand parses its arguments, builds the config, calls the library
once and prints. Bad input ends in a one-line ``error:`` message, never a
traceback. The library (and with it torch, pandas and numpy) is imported
inside the commands that use it, so that ``echoengine --help`` and a typo's
usage message come back at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from echoengine import runtime
from echoengine.config import EchoConfig
from echoengine.errors import EchoError

if TYPE_CHECKING:
    import pandas as pd

    from echoengine.errors import AudioError

#: Where features are cached unless ``--cache-dir`` (or, for train and cv, ``--config``'s ``data.cache_dir``) says
#: otherwise; a bundle's config never does.
DEFAULT_CACHE = Path.home() / ".cache" / "echoengine" / "features"

__all__ = ["main"]


def _config(args: argparse.Namespace, base: EchoConfig | None = None) -> EchoConfig:
    """The config file (or ``base``, or the defaults) with the data options of the command line."""
    config = base or (EchoConfig.load(args.config) if getattr(args, "config", None) else EchoConfig())
    if getattr(args, "group_regex", None):
        config = config.replace(data={"group_regex": args.group_regex})
    if getattr(args, "allow_outside_paths", False):
        config = config.replace(data={"allow_outside_paths": True})
    return config


# command-line option -> (section, key) of the config
_TRAINING_OPTIONS = {
    "backbone": ("model", "backbone"), "head": ("model", "head"), "pretrained": ("model", "pretrained"),
    "weights": ("model", "weights"), "dropout": ("model", "dropout"), "embedder": ("model", "embedder"),
    "pooling": ("model", "pooling"), "hidden_size": ("model", "hidden_size"),
    "embedding_hop": ("model", "embedding_hop"), "trainable_blocks": ("model", "trainable_blocks"),
    "birdnet_blocks": ("model", "birdnet_blocks"),
    "backbone_lr_factor": ("train", "backbone_lr_factor"),
    "epochs": ("train", "epochs"), "lr": ("train", "learning_rate"), "optimizer": ("train", "optimizer"),
    "weight_decay": ("train", "weight_decay"), "schedule": ("train", "schedule"),
    "warmup_epochs": ("train", "warmup_epochs"), "patience": ("train", "patience"),
    "label_smoothing": ("train", "label_smoothing"), "class_weights": ("train", "class_weights"),
    "freeze_backbone": ("train", "freeze_backbone"), "unfreeze_epoch": ("train", "unfreeze_epoch"),
    "refit": ("train", "refit"), "probe_epochs": ("train", "probe_epochs"), "solver": ("train", "solver"),
    "seed": ("train", "seed"), "device": ("train", "device"),
    "mixup": ("augment", "mixup_p"), "batch_size": ("data", "batch_size"), "workers": ("data", "num_workers"),
    "folds": ("data", "folds"), "sparse_classes": ("data", "sparse_classes"), "cache_dir": ("data", "cache_dir"),
    "multilabel": ("model", "multilabel"), "unlabeled": ("data", "unlabeled"), "min_overlap": ("data", "min_overlap"),
    "frequency_overlap": ("data", "frequency_overlap"),
}


def _training_options(args: argparse.Namespace) -> tuple[EchoConfig, dict[str, dict]]:
    """The config file (or defaults) and the changes the command line asks for, applied after the training policy."""
    changes: dict[str, dict] = {}
    for option, (section, key) in _TRAINING_OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:  # a flag given as --no-x turns off a true from the config file
            changes.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    config = _config(args)
    if getattr(args, "no_cache", False):
        changes.setdefault("data", {})["cache_dir"] = ""
    elif not (changes.get("data", {}).get("cache_dir") or config.data.cache_dir):
        changes.setdefault("data", {})["cache_dir"] = str(DEFAULT_CACHE)
    return config, changes


def _block_list(text: str) -> list[str]:
    """``--birdnet-blocks``: ``"3-4,3-5"`` -> ``["3-4", "3-5"]``; ``"none"`` -> ``[]``."""
    return [] if text.strip().lower() in ("", "none") else [part.strip() for part in text.split(",") if part.strip()]


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


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _counts(series: pd.Series, unit: str) -> str:
    return ", ".join(f"{value}{unit} ({n})" for value, n in series.value_counts().sort_index().items())


def cmd_inspect(args: argparse.Namespace) -> int:
    from echoengine import catalog

    config = _config(args)
    usable, errors = _scan(args.data, config, on_error="ignore")  # listed in the report below
    total = len(usable) + len(errors)
    print(f"dataset: {args.data}")
    print(f"files: {total} ({len(usable)} usable, {len(errors)} unreadable)")
    if len(usable):
        classes = catalog.class_names(usable)
        print(f"classes: {len(classes)}" + ("" if classes else " (unlabelled files)"))
        print(f"groups (source recordings): {usable['group'].nunique()}")
        print(f"total duration: {_minutes(usable['duration'].sum())}")
        print(f"sample rates: {_counts(usable['sample_rate'], ' Hz')}")
        channels = usable["channels"].map(lambda n: {1: "mono", 2: "stereo"}.get(n, f"{n} channels"))
        print(f"channels: {_counts(channels, '')}")
        _print_classes(usable)
    if errors:
        print(f"\nunreadable files ({len(errors)}):")
        for error in errors:
            print(f"  {error}")
    if not len(usable):
        print("error: no usable audio files", file=sys.stderr)
        return 1
    return 0


def _print_classes(usable: pd.DataFrame) -> None:
    """Files, source recordings and durations per class; a warning for classes that cannot be split."""
    per_class = usable.groupby("label").agg(count=("duration", "size"), recordings=("group", "nunique"),
                                            sum=("duration", "sum"), min=("duration", "min"),
                                            max=("duration", "max"))
    width = max([len(str(label)) for label in per_class.index] + [10])
    print(f"\n  {'class':<{width}} {'files':>6} {'recordings':>10} {'duration':>10} {'shortest':>9} {'longest':>9}")
    for label, row in per_class.iterrows():
        print(f"  {label or '(none)':<{width}} {int(row['count']):>6} {int(row['recordings']):>10} "
              f"{_minutes(row['sum']):>10} {row['min']:>8.1f}s {row['max']:>8.1f}s")
    single = [str(label) for label, n in per_class["recordings"].items() if label and n < 2]
    if single:
        print(f"\nwarning: {len(single)} class(es) have a single source recording and cannot be both trained on "
              f"and held out: {', '.join(single[:10])}{' ...' if len(single) > 10 else ''}; they are trained on and "
              "never tested (add recordings to test them, or leave them out with --sparse-classes drop)",
              file=sys.stderr)


def cmd_preview(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise EchoError(f"--n must be at least 1, got {args.n}")
    import numpy as np
    import torch

    from echoengine import catalog
    from echoengine.dataset import ClipDataset
    from echoengine.plots import plot_images

    config = _config(args)
    _refuse_existing(args.out if args.out.suffix else args.out.with_suffix(".png"), args.overwrite)
    usable, _ = _scan(args.data, config)
    if not len(usable):
        print("error: no usable audio files", file=sys.stderr)
        return 1
    rng = np.random.default_rng(args.seed)
    picked = usable.iloc[np.sort(rng.permutation(len(usable))[: args.n])].reset_index(drop=True)
    classes = catalog.class_names(usable)
    dataset = ClipDataset(picked, classes, config, train=args.augment)
    if args.augment:  # a random variant of each file
        items = list(zip(range(len(picked)), rng.integers(0, config.augment.variants, len(picked)).tolist()))
    else:  # the first window of each file
        items = np.unique(dataset.rows(), return_index=True)[1].tolist()
    # one item per picked row, in row order; a file that broke since the scan gives None
    shown = [(path, pair) for path, pair in zip(picked["path"], (dataset[item] for item in items)) if pair]
    if not shown:
        print("error: no usable audio files", file=sys.stderr)
        return 1
    images = torch.stack([image for _, (image, _) in shown])
    titles = [
        f"{classes[int(t.argmax())] if t.sum() else '(unlabelled)'}\n{Path(path).name[:28]}"
        for path, (_, t) in shown
    ]
    what = "augmented training variants" if args.augment else "clean first windows"
    out = plot_images(images[:, 0].numpy(), titles, args.out, clip_seconds=config.audio.clip_seconds,
                      suptitle=f"model inputs ({what}), {tuple(images.shape[1:])} each, drawn time x frequency")
    print(f"wrote {out} ({len(images)} model inputs of {args.data})")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    import numpy as np

    from echoengine import catalog

    options = {"folds": args.folds, "val_fraction": args.val, "test_fraction": args.test,
               "split_seed": args.seed, "sparse_classes": args.sparse_classes}
    changes = {key: value for key, value in options.items() if value is not None}
    config = _config(args)
    config = config.replace(data=changes) if changes else config
    data = config.data
    _refuse_existing(args.out, args.overwrite)
    usable, _ = _scan(args.data, config)
    if args.kfold:
        parts = catalog.kfold(usable, folds=data.folds, seed=data.split_seed, sparse_classes=data.sparse_classes)
        part_names = np.where(parts >= 0, np.char.add("fold", parts.astype(str)),
                              np.where(parts == catalog.TRAIN_ONLY, "train", "excluded"))
    else:
        part_names = catalog.split(usable, val_fraction=data.val_fraction, test_fraction=data.test_fraction,
                                   seed=data.split_seed, sparse_classes=data.sparse_classes)
    table = usable[["path", "label", "group"]].assign(part=part_names)
    table.to_csv(args.out, index=False)
    counts = table.groupby("part").agg(files=("path", "size"), classes=("label", "nunique"),
                                       recordings=("group", "nunique"))
    print(counts.to_string())
    print(f"wrote {args.out} ({len(table)} files; no source recording is in two parts)")
    return 0


_RESUME_OPTIONS = ("epochs", "device", "workers", "cache_dir", "no_cache", "quiet", "resume")


def _say(line: str) -> None:
    print(line, flush=True)


def _boxes_options(args: argparse.Namespace) -> dict:
    """The annotation options of a multi-label command, as the API takes them."""
    from echoengine.sources import parse_columns

    return {"annotations": getattr(args, "annotations", None), "negatives": getattr(args, "negatives", None),
            "columns": parse_columns(getattr(args, "columns", None))}


def cmd_train(args: argparse.Namespace) -> int:
    from echoengine import api

    if args.resume:
        ignored = [f"--{name.replace('_', '-')}" for name in {*_TRAINING_OPTIONS, "config", "no_cache", "group_regex"}
                   if name not in _RESUME_OPTIONS and getattr(args, name, None) not in (None, False)]
        if ignored:
            print(f"warning: --resume continues with the run's own config; ignored: {', '.join(sorted(ignored))}",
                  file=sys.stderr)
    config, changes = _training_options(args)
    # a resumed run keeps its own config; only these (and this machine's settings) may be given again
    given = {key: value for key, value in {"epochs": args.epochs, "device": args.device}.items() if value is not None}
    resume_changes = {"train": given, "data": {} if args.workers is None else {"num_workers": args.workers}}
    result = api.train(args.data, config=config, changes=changes, finetune=args.finetune, out=args.out,
                       resume=args.resume, overwrite=args.overwrite, resume_changes=resume_changes,
                       progress=not args.quiet, log=_say, **_boxes_options(args))
    print(f"\n{result.report}")
    print(f"\nwrote the bundle {result.bundle} (metrics.json, plots/, history.csv; tensorboard --logdir "
          f"{result.bundle / 'tensorboard'})")
    return 0


def _cache_dir(args: argparse.Namespace) -> Path | None:
    """Where this command caches features: never where a bundle's config says (EchoConfig.portable)."""
    return None if getattr(args, "no_cache", False) else getattr(args, "cache_dir", None) or DEFAULT_CACHE


def _data_options(args: argparse.Namespace) -> dict:
    options = {"group_regex": getattr(args, "group_regex", None),
               "allow_outside_paths": getattr(args, "allow_outside_paths", False) or None}
    return {key: value for key, value in options.items() if value}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from echoengine import api

    result = api.evaluate(args.bundle, args.data, out=args.out, overwrite=args.overwrite,
                          data_options=_data_options(args), cache_dir=_cache_dir(args), progress=True,
                          **_boxes_options(args))
    if result.multilabel:
        print(f"\n{args.data}:\n{result.report}")
        print(f"\nwrote {result.out / 'metrics.json'}, {result.out / 'per_class_recording.csv'} and "
              f"{result.out / 'plots'}")
        return 0
    print(f"\n{args.data}:\n{result.report}")
    print(f"\nwrote {result.out / 'metrics.json'} and {result.out / 'plots'}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from echoengine import api

    result = api.calibrate(args.bundle, args.data, data_options=_data_options(args), cache_dir=_cache_dir(args),
                           progress=True, **_boxes_options(args))
    print(result.thresholds.round(3).to_string(index=False))
    print(f"\nwrote {result.path} (F1-optimal threshold per class over the windows of {result.files} files, for "
          "these weights); echoengine detect uses it unless --threshold is given")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from echoengine import api

    result = api.detect(
        args.bundle, args.paths, out=args.out, resume=args.resume, overwrite=args.overwrite, summary=args.summary,
        progress=not args.quiet, log=lambda line: print(line, file=sys.stderr),
        overlap=args.overlap, min_window=args.min_window, threshold=args.threshold, top_n=args.top_n,
        include=tuple(_species(args.species)), exclude=tuple(_species(args.exclude)), merge_gap=args.merge_gap,
        batch_size=args.batch_size, workers=args.workers, onnx=args.onnx)
    events = result.events
    print(f"{len(events)} events in {events['file'].nunique()} files; wrote {args.out} "
          f"(events.csv, events.selections.txt, raven/, audacity/, events.jsonl, scores.parquet)")
    if len(result.errors):
        print(f"{len(result.errors)} file(s) could not be read: see {result.written['errors.csv']}", file=sys.stderr)
    if args.summary:
        print(result.summary_text)
        print(f"wrote {Path(args.out) / 'summary.csv'} and {Path(args.out) / 'summary.png'}")
    return 0


def _species(values: list[str] | None) -> list[str]:
    """Species names from comma-separated values or files of one name per line."""
    names: list[str] = []
    for value in values or []:
        path = Path(value)
        if path.is_file():
            names += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            names += [name.strip() for name in value.split(",") if name.strip()]
    return names


def _range(text: str, kind=float) -> tuple:
    """``"1-4"`` or ``"-5..15"`` -> (low, high)."""
    low, sep, high = text.partition("..") if ".." in text else text.rpartition("-")
    try:
        return (kind(low), kind(high)) if sep else (kind(text), kind(text))
    except ValueError:
        raise EchoError(f"not a range: {text!r} (write it as 1-4 or -5..15)") from None


def cmd_mix(args: argparse.Namespace) -> int:
    from echoengine.mix import mix_soundscapes, split_sources
    from echoengine.sources import find_audio

    config = _config(args)
    _refuse_nonempty(args.out, args.overwrite)
    common = {"duration": args.duration, "events": _range(args.events, int), "snr": _range(args.snr),
              "config": config.audio, "seed": args.seed}
    backgrounds = find_audio(args.background) if args.background else []
    clips, _ = _scan(args.clips, config)
    if args.test_fraction:
        parts = split_sources(clips, backgrounds, test_fraction=args.test_fraction, seed=args.split_seed)
        test_count = max(1, round(args.count * args.test_fraction / (1 - args.test_fraction)))
        counts = {"train": args.count, "test": test_count}
        for part, (part_clips, part_backgrounds) in parts.items():
            boxes = mix_soundscapes(part_clips, args.out / part, count=counts[part], backgrounds=part_backgrounds,
                                    prefix=part, **common)
            print(f"{part}: {counts[part]} soundscapes, {len(boxes)} events of {boxes['label'].nunique()} classes "
                  f"from {part_clips['group'].nunique()} source recordings over {len(part_backgrounds)} "
                  f"backgrounds -> {args.out / part}")
    else:
        boxes = mix_soundscapes(clips, args.out, count=args.count, backgrounds=backgrounds, **common)
        print(f"{args.count} soundscapes, {len(boxes)} events -> {args.out}")
    print("each NAME.flac has its Raven table NAME.selections.txt; train on them with --multilabel")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from echoengine import api

    config, changes = _training_options(args)
    result = api.cross_validate(args.data, config=config, changes=changes, finetune=args.finetune, out=args.out,
                                resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, log=_say,
                                **_boxes_options(args))
    table = result.table()
    width = 22 if result.multilabel else 18
    print(f"\n{'metric':<{width}} {'mean':>7} {'std':>7}   per fold")
    for row in table.itertuples(index=False):
        per_fold = " ".join(f"{value:.3f}" for value in row[3:])
        print(f"{row.metric:<{width}} {row.mean:>7.4f} {row.std:>7.4f}   {per_fold}")
    what = "metrics.json, cv_folds.csv" + ("" if result.multilabel else ", plots/")
    print(f"\nwrote {args.out} (fold0..fold{len(result.summary['folds']) - 1} bundles, {what})"
          + ("" if result.multilabel else f"; predict with it as an ensemble: echoengine predict {args.out} FILE..."))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from echoengine import api

    if args.top_k < 1:
        raise EchoError(f"--top-k must be at least 1, got {args.top_k}")
    result = api.predict(args.bundle, args.files, onnx=args.onnx, cache_dir=None if args.onnx else _cache_dir(args),
                         progress=None)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if not len(result.table):
        print("error: no file could be read", file=sys.stderr)
        return 1
    _print_predictions(_prediction_rows(result, top_k=args.top_k), args.format)
    return 0


def _prediction_rows(result, *, top_k: int) -> list[dict]:
    """Each file's ``top_k`` classes, probabilities in percent: the rows of ``predict``'s outputs."""
    rows = []
    for path, ranks in zip(result.table["file"], result.top(top_k), strict=True):
        top = [{"species": name, "probability": round(100 * probability, 2)} for name, probability in ranks]
        rows.append({"file": path, **top[0], "top_k": top})
    return rows


def cmd_export(args: argparse.Namespace) -> int:
    from echoengine import api

    for exported in api.export(args.bundle, check=args.check or ()):
        print(f"wrote {exported.path} (checked against PyTorch: max probability difference "
              f"{exported.difference:.1e})")
    return 0


def _print_predictions(results: list[dict], form: str) -> None:
    if form == "json":
        print(json.dumps(results, indent=2, ensure_ascii=False))
    elif form == "csv":
        import pandas as pd

        rows = [{"file": r["file"], "rank": rank + 1, "species": t["species"], "probability": t["probability"]}
                for r in results for rank, t in enumerate(r["top_k"])]
        pd.DataFrame(rows, columns=["file", "rank", "species", "probability"]).to_csv(sys.stdout, index=False)
    else:
        width = max([len(Path(r["file"]).name) for r in results] + [4])
        for r in results:
            others = ", ".join(f"{t['species']} {t['probability']:.1f}%" for t in r["top_k"][1:])
            print(f"{Path(r['file']).name:<{width}}  {r['species']} ({r['probability']:.1f}%)"
                  + (f"   next: {others}" if others else ""))


def cmd_demo(args: argparse.Namespace) -> int:
    from echoengine import api, synthetic
    from echoengine.bundle import prepare_output

    out, marker = args.out, ".echoengine-demo"
    earlier = out.is_dir() and any(out.iterdir())
    prepare_output(out, overwrite=True, owned=("data", "bundle", "cache", "field", "detections", marker),
                   markers=(marker,), recursive=False)
    (out / marker).write_text("a folder of echoengine demo: `echoengine demo` replaces it\n", encoding="utf-8")
    if earlier:
        print(f"replaced the earlier demo in {out}")
    data = synthetic.make_dataset(out / "data", classes=5, files_per_class=args.files_per_class, seed=args.seed)
    print(f"1/5 wrote a SYNTHETIC dataset (computer-made calls over noise, not animals): {data}")
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.2},
        train={"epochs": args.epochs, "learning_rate": args.lr, "patience": 8, "lr_patience": 3, "seed": args.seed},
        data={"group_regex": r"^(.+_rec\d+)_", "batch_size": 8, "val_fraction": 0.2, "test_fraction": 0.2,
              "cache_dir": str(out / "cache")},
        augment={"variants": 4, "time_stretch_p": 0.0, "pitch_shift_p": 0.0},
    )
    print("2/5 training small_cnn on the CPU (about a minute on 2 cores)", flush=True)
    trained = api.train(data, config=config, out=out / "bundle", progress=not args.quiet, log=_say)
    print(f"\n{trained.report}")
    bundle = trained.bundle
    print("\n3/5 predicting the first file of each class with the bundle:")
    examples = sorted(next(iter(sorted(folder.glob("*.*")))) for folder in data.iterdir() if folder.is_dir())
    _print_predictions(_prediction_rows(api.predict(bundle, examples), top_k=2), "table")
    _demo_detection(data, bundle, out, config)
    print(f"\n5/5 done. bundle: {bundle}\n    metrics: {bundle / 'metrics.json'}\n"
          f"    plots: {bundle / 'plots' / 'confusion.png'}, {bundle / 'plots' / 'training.png'}\n"
          f"    detections: {out / 'detections' / 'events.csv'} (Raven: {out / 'detections' / 'raven'})")
    return 0


def _demo_detection(data: Path, bundle: Path, out: Path, config: EchoConfig) -> None:
    """Mix a 60 s SYNTHETIC field recording from the held-out test files, detect its calls, compare with the truth."""
    import pandas as pd

    from echoengine import catalog
    from echoengine.bundle import load_bundle
    from echoengine.detection import DetectOptions, detect
    from echoengine.mix import mix_soundscapes

    splits = pd.read_csv(bundle / "splits.csv", keep_default_na=False)
    clips, _ = catalog.scan(splits[splits["part"] == "test"].drop(columns="part"), config.audio)
    truth = mix_soundscapes(clips, out / "field", count=1, duration=60.0, events=(5, 5), snr=(10.0, 20.0),
                            config=config.audio, seed=1, prefix="synthetic_field")
    print(f"\n4/5 detecting calls in a 60 s SYNTHETIC field recording ({truth['path'].iloc[0]}; the truth "
          "is its Raven table beside it):")
    written = detect([load_bundle(bundle)], [truth["path"].iloc[0]], out / "detections",
                     options=DetectOptions(overlap=2.5, threshold=0.5), progress=False, log=lambda line: None)
    events = pd.read_csv(written["events.csv"])
    for event in events.itertuples():
        real = truth[(truth["start"] < event.end) & (truth["end"] > event.start) & (truth["label"] == event.label)]
        print(f"  {event.start:6.1f}-{event.end:5.1f} s  {event.label:<20} {event.score:.2f}  "
              f"{'matches a true call' if len(real) else 'no true call of it here'}")
    found = sum(((events["label"] == row.label) & (events["start"] < row.end) & (events["end"] > row.start)).any()
                for row in truth.itertuples())
    print(f"  {found} of the {len(truth)} true calls were detected. A single-label model shares each window's "
          "probability among its classes, so background can be named after the nearest one; a --multilabel "
          "model trained on annotated recordings can also answer 'none'.")


def cmd_synth(args: argparse.Namespace) -> int:
    from echoengine import synthetic

    _refuse_nonempty(args.out, args.overwrite)
    root = synthetic.make_dataset(args.out, classes=args.classes, files_per_class=args.files_per_class, seed=args.seed)
    print(f"wrote a SYNTHETIC dataset of {args.classes} classes x {args.files_per_class} files to {root}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.out:
        _refuse_existing(args.out, args.overwrite)
        print(f"wrote {config.save(args.out)}")
    else:
        import tomli_w

        print(tomli_w.dumps(config.to_dict()), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="echoengine", description="Sound classification for ecology.")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("data", type=Path, help="folder per class, flat folder, ESC-50-style CSV or ESC-50 folder")
        p.add_argument("--config", type=Path, help="a TOML config (defaults: the Echo pipeline's)")
        p.add_argument("--group-regex", help="regex on file names naming the source recording")
        p.add_argument("--allow-outside-paths", action="store_true",
                       help="use CSV rows naming files outside the dataset folder (../x.wav, absolute paths); "
                            "refused by default")
        return p

    p = data_command("inspect", "list classes, files, durations and unreadable files of a dataset")
    p.set_defaults(func=cmd_inspect)
    p = data_command("preview", "draw a grid of the model inputs of one batch")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write (default preview.png)")
    p.add_argument("--n", type=int, default=16, help="how many inputs (default 16)")
    p.add_argument("--augment", action="store_true", help="show augmented training variants")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview)

    p = data_command("split", "assign files to train/val/test (or k folds), stratified and grouped by recording")
    p.add_argument("--out", type=Path, default=Path("splits.csv"), help="CSV to write (default splits.csv)")
    p.add_argument("--kfold", action="store_true", help="k folds instead of train/val/test")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--folds", type=int, help="number of folds (default 5)")
    p.add_argument("--val", type=float, help="validation fraction (default 0.15)")
    p.add_argument("--test", type=float, help="test fraction (default 0.15)")
    p.add_argument("--seed", type=int, help="split seed (default 0)")
    p.add_argument("--sparse-classes", choices=["train", "drop", "error"],
                   help="classes recorded only once: train on them without testing them (default), leave them out, "
                        "or stop")
    p.set_defaults(func=cmd_split)

    def annotation_options(p) -> None:
        p.add_argument("--annotations", type=Path, help="multi-label: annotation table or folder of them (default: "
                       "DATA)")
        p.add_argument("--negatives", type=Path, help="multi-label: a table of verified negatives (boxes NOT "
                       "holding their species)")
        p.add_argument("--columns", help="CSV annotation columns, ours=theirs: file, label, start, end, low_freq, "
                       "high_freq (RFCx names and these are found by themselves)")

    def training_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("model and training (defaults: the config's, i.e. the Echo pipeline's)")
        g.add_argument("--backbone", help="efficientnetv2_b0 (default), efficientnet_b0, efficientnet_b3, "
                       "resnet50, inception_v3, mobilenetv3_large_100, small_cnn, or birdnet (BirdNET V2.4 on raw "
                       "audio, CC BY-NC-SA 4.0: fine-tuned with --finetune)")
        g.add_argument("--finetune", action="store_true",
                       help="with --backbone birdnet: train the pretrained network too, at 0.1x the head's rate "
                            "(change with --backbone-lr-factor)")
        g.add_argument("--trainable-blocks", type=int, metavar="N",
                       help="with --backbone birdnet: fine-tune only its last N blocks (default: all)")
        g.add_argument("--backbone-lr-factor", type=float, help="the backbone's learning rate relative to the head's")
        g.add_argument("--solver", choices=["auto", "sgd", "lbfgs"],
                       help="lbfgs: a linear head on an embedder fitted to convergence, its L2 strength chosen by "
                            "cross-validation over the training recordings (no validation part); auto (default): "
                            "lbfgs where it applies, sgd (epochs) elsewhere")
        g.add_argument("--head", choices=["auto", "echo", "linear", "mlp", "attention"],
                       help="attention: per-class attention pooling over time (multi-label)")
        g.add_argument("--embedder", help="train a head on a frozen pretrained embedder: birdnet (BirdNET V2.4, "
                       "CC BY-NC-SA 4.0) or cnn:/path/to/bundle")
        g.add_argument("--pooling", choices=["mean", "max"], help="pooling of window logits in a clip (embedders)")
        g.add_argument("--hidden-size", type=int, help="hidden layer of the mlp head (default 512)")
        g.add_argument("--embedding-hop", type=float, metavar="SECONDS",
                       help="hop between the embedder windows of a clip (default: the window, no overlap)")
        g.add_argument("--birdnet-blocks", type=_block_list, metavar="BLOCKS",
                       help="BirdNET blocks whose pooled outputs join its embedding, comma-separated "
                       "(default 3-3,3-4,3-5; none: the embedding alone)")
        g.add_argument("--pretrained", action=argparse.BooleanOptionalAction,
                       help="start from ImageNet weights (timm backbones)")
        g.add_argument("--weights", type=Path, help="a local weights file for --pretrained (offline)")
        g.add_argument("--dropout", type=float)
        g.add_argument("--epochs", type=int)
        g.add_argument("--batch-size", type=int)
        g.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
        g.add_argument("--optimizer", choices=["adam", "adamw", "adamax"])
        g.add_argument("--weight-decay", type=float)
        g.add_argument("--schedule", choices=["plateau", "cosine"])
        g.add_argument("--warmup-epochs", type=int)
        g.add_argument("--patience", type=int, help="early stopping patience in epochs (default 16)")
        g.add_argument("--label-smoothing", type=float)
        g.add_argument("--mixup", type=float, metavar="P", help="probability of mixup per batch")
        g.add_argument("--class-weights", choices=["none", "balanced"])
        g.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, help="train the head only")
        g.add_argument("--unfreeze-epoch", type=int, help="with --freeze-backbone: train everything from this epoch")
        g.add_argument("--probe-epochs", type=int, metavar="N",
                       help="with --finetune: first train the head on the frozen BirdNET embeddings (up to N "
                       "epochs), then fine-tune from it")
        g.add_argument("--refit", action=argparse.BooleanOptionalAction,
                       help="after early stopping, train again on train + validation for the chosen epochs")
        g.add_argument("--seed", type=int)
        g.add_argument("--device", choices=["auto", "cpu", "cuda"])
        g.add_argument("--workers", type=int, help="data loading processes (default 0: in the main process)")
        g.add_argument("--sparse-classes", choices=["train", "drop", "error"],
                       help="classes with a single source recording: train on them without testing them (default), "
                            "leave them out, or stop with an error")
        g.add_argument("--cache-dir", type=Path, help=f"feature cache (default {DEFAULT_CACHE})")
        g.add_argument("--no-cache", action="store_true", help="compute features every time")
        g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
        g.add_argument("--overwrite", action="store_true",
                       help="replace the earlier run in --out (every file of it is removed first)")
        g.add_argument("--quiet", action="store_true", help="no progress bars")
        m = p.add_argument_group("multi-label training on annotated recordings")
        m.add_argument("--multilabel", action=argparse.BooleanOptionalAction,
                       help="several species per clip: sigmoid outputs, binary cross-entropy, clips labelled from "
                       "the boxes of annotation tables (Raven, Audacity, CSV) in DATA or --annotations")
        annotation_options(m)
        m.add_argument("--unlabeled", choices=["negative", "ignore"],
                       help="a species with no box in a clip: a negative (default), or left out of the loss")
        m.add_argument("--min-overlap", type=float, metavar="SECONDS",
                       help="a clip holds a box overlapping it this long, or by half the box (default 0.5)")
        m.add_argument("--frequency-overlap", action=argparse.BooleanOptionalAction,
                       help="count only boxes whose frequencies overlap the front end's band")

    p = data_command("train", "train a classifier and write a model bundle (evaluated on a held-out test part)")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    training_options(p)
    p.set_defaults(func=cmd_train)

    p = data_command("cv", "k-fold cross-validation grouped by source recording; keeps the fold models")
    p.add_argument("--out", type=Path, required=True, help="folder for the fold bundles and the summary")
    p.add_argument("--folds", type=int, help="number of folds (default 5)")
    training_options(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("evaluate", help="score a bundle (or a CV folder as an ensemble) on labelled data")
    p.add_argument("bundle", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, help="report folder (default BUNDLE/evaluate-<data>)")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier run in --out")
    p.add_argument("--no-cache", action="store_true", help="compute features every time")
    p.add_argument("--cache-dir", type=Path, help=f"feature cache (default {DEFAULT_CACHE})")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="use CSV rows naming files outside the dataset folder; refused by default")
    annotation_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="species and probability of audio files (mean over 5 s windows)")
    p.add_argument("bundle", type=Path, help="a bundle, or a CV folder (its fold models as an ensemble)")
    p.add_argument("files", type=Path, nargs="+", help="audio files or folders")
    p.add_argument("--top-k", type=int, default=3, help="how many species per file (default 3)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.add_argument("--onnx", action="store_true", help="run the exported model.onnx with onnxruntime")
    p.add_argument("--no-cache", action="store_true", help="compute features every time")
    p.add_argument("--cache-dir", type=Path, help=f"feature cache (default {DEFAULT_CACHE})")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("detect", help="timestamped detections over long recordings: CSV, Raven, Audacity, JSON")
    p.add_argument("bundle", type=Path, help="a bundle, or a CV folder (its fold models as an ensemble)")
    p.add_argument("paths", type=Path, nargs="+", help="audio files or folders (walked recursively)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new or empty, unless --resume or --overwrite")
    p.add_argument("--overlap", type=float, default=0.0, help="seconds shared by consecutive windows (default 0)")
    p.add_argument("--min-window", type=float, default=0.0, metavar="SECONDS",
                   help="drop a file's last, partial window when it holds less audio than this")
    p.add_argument("--threshold", type=float,
                   help="one score threshold for all classes, in [0, 1] (default: the bundle's thresholds.csv, "
                   "else 0.5)")
    p.add_argument("--top-n", type=int, default=0, help="only a window's N best classes may detect (default: all)")
    p.add_argument("--species", action="append", metavar="NAMES|FILE",
                   help="report only these species (comma-separated, or a file of one per line)")
    p.add_argument("--exclude", action="append", metavar="NAMES|FILE", help="never report these species")
    p.add_argument("--merge-gap", type=float, default=0.0, metavar="SECONDS",
                   help="merge detections of a species closer than this (default 0: overlapping or touching)")
    p.add_argument("--batch-size", type=int, default=16, help="windows passed to the model at a time (default 16)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes decoding audio and computing features beside the model's (default 0: in the "
                   "main process, the fastest on 2 cores; more cores gain from them)")
    p.add_argument("--onnx", action="store_true", help="score with the exported model.onnx (onnxruntime)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="keep the files an interrupted run into --out finished")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an earlier run's outputs in --out (only the files detect wrote)")
    p.add_argument("--summary", action="store_true", help="print detections per species and plot them over time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("mix", help="build soundscapes (and their Raven tables) from labelled clips")
    p.add_argument("clips", type=Path, help="labelled clips (any DATA: folder per class, ESC-50 CSV or folder)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=50, help="soundscapes to write (for training, with --test-fraction)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per soundscape (default 30)")
    p.add_argument("--events", default="1-4", help="events per soundscape, a range (default 1-4)")
    p.add_argument("--snr", default="-5..15", help="event-to-background ratio in dB, a range (default -5..15)")
    p.add_argument("--background", type=Path, nargs="+", help="recordings or folders to mix into (default: noise)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="also write test soundscapes from other source recordings and backgrounds (train/, test/)")
    p.add_argument("--seed", type=int, default=0, help="draws of the soundscapes")
    p.add_argument("--split-seed", type=int, default=0,
                   help="draw of the train/test split of sources (keep it to mix more soundscapes of one side)")
    p.add_argument("--config", type=Path, help="a TOML config (its [audio] sets the sample rate)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="use CSV rows naming files outside the dataset folder; refused by default")
    p.add_argument("--group-regex", help="regex on file names naming the source recording")
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("calibrate", help="per-class detection thresholds (F1-optimal) from labelled data")
    p.add_argument("bundle", type=Path, help="a bundle, or a CV folder (thresholds for the ensemble)")
    p.add_argument("data", type=Path, help="labelled validation data (not the training data)")
    p.add_argument("--no-cache", action="store_true", help="compute features every time")
    p.add_argument("--cache-dir", type=Path, help=f"feature cache (default {DEFAULT_CACHE})")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="use CSV rows naming files outside the dataset folder; refused by default")
    annotation_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("export", help="write BUNDLE/model.onnx (raw waveform in, probabilities out) and check it")
    p.add_argument("bundle", type=Path, help="a bundle, or a CV folder (each fold is exported)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--check", type=Path, nargs="+", help="audio files for the parity check (default: test files)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="SYNTHETIC end-to-end demo: make data, train small_cnn, evaluate, predict")
    p.add_argument("--out", type=Path, default=Path("echoengine-demo"), help="folder (default echoengine-demo)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--files-per-class", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a small SYNTHETIC dataset (for demos and tests)")
    p.add_argument("out", type=Path)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--files-per-class", type=int, default=6)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("config", help="print (or write) the configuration with its defaults")
    p.add_argument("--config", type=Path, help="start from this TOML instead of the defaults")
    p.add_argument("--out", type=Path, help="write it here instead of printing")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_config)
    return parser


class _MessageFormat(logging.Formatter):
    """Messages as they are; warnings and errors after their level, as the command's own (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def _log_to_stderr() -> None:
    """The library's messages (what it does, warnings) on this command's standard error."""
    logger = logging.getLogger("echoengine")
    for handler in [h for h in logger.handlers if isinstance(h.formatter, _MessageFormat)]:
        logger.removeHandler(handler)  # an earlier main() of this process (tests, notebooks)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormat())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with typos answered by the subcommand's usage and the closest names.

    Examples
    --------
    >>> parse(["inspect", "data"]).command
    'inspect'
    """
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps the subparsers only there
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        near = difflib.get_close_matches(argv[0], commands, n=1)
        parser.error(f"unknown command {argv[0]!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = commands[args.command]
        known = [option for option in command._option_string_actions if option.startswith("--")]
        hints = [f"{extra} (did you mean {near[0]}?)" if extra.startswith("-") and (near := difflib.get_close_matches(
            extra.split("=")[0], known, n=1)) else extra for extra in extras]
        command.error(f"unrecognized arguments: {' '.join(hints)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _log_to_stderr()
    runtime.keep_freed_memory()
    try:
        return args.func(args)
    except EchoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # e.g. an output folder that does not exist
        detail = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
        print(f"error: {detail}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
