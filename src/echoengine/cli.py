"""The ``echoengine`` command: thin wiring over the modules of the package.

Each subcommand parses its arguments, builds the config, calls the library
and prints. Bad input ends in a one-line ``error:`` message, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from echoengine import catalog, runtime, synthetic
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset
from echoengine.errors import AudioError, EchoError
from echoengine.plots import plot_images

__all__ = ["main"]


def _config(args: argparse.Namespace) -> EchoConfig:
    config = EchoConfig.load(args.config) if getattr(args, "config", None) else EchoConfig()
    if getattr(args, "group_regex", None):
        config = config.replace(data={"group_regex": args.group_regex})
    return config


def _progress(description: str):
    def wrap(iterable, total):
        return tqdm(iterable, total=total, desc=description, unit="file", leave=False, file=sys.stderr)
    return wrap


def _scan(data: Path, config: EchoConfig, *, on_error: str = "warn") -> tuple[pd.DataFrame, list[AudioError]]:
    table = catalog.load_catalog(data, config.data)
    return catalog.scan(table, config.audio, on_error=on_error, progress=_progress("checking"))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _counts(series: pd.Series, unit: str) -> str:
    return ", ".join(f"{value}{unit} ({n})" for value, n in series.value_counts().sort_index().items())


def cmd_inspect(args: argparse.Namespace) -> int:
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
        per_class = usable.groupby("label")["duration"].agg(["count", "sum", "min", "max"])
        width = max([len(str(label)) for label in per_class.index] + [10])
        print(f"\n  {'class':<{width}} {'files':>6} {'duration':>10} {'shortest':>9} {'longest':>9}")
        for label, row in per_class.iterrows():
            print(f"  {label or '(none)':<{width}} {int(row['count']):>6} {_minutes(row['sum']):>10} "
                  f"{row['min']:>8.1f}s {row['max']:>8.1f}s")
    if errors:
        print(f"\nunreadable files ({len(errors)}):")
        for error in errors:
            print(f"  {error}")
    if not len(usable):
        print("error: no usable audio files", file=sys.stderr)
        return 1
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise EchoError(f"--n must be at least 1, got {args.n}")
    config = _config(args)
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
    options = {"folds": args.folds, "val_fraction": args.val, "test_fraction": args.test,
               "split_seed": args.seed, "sparse_classes": args.sparse_classes}
    changes = {key: value for key, value in options.items() if value is not None}
    config = _config(args)
    config = config.replace(data=changes) if changes else config
    data = config.data
    usable, _ = _scan(args.data, config)
    if args.kfold:
        parts = catalog.kfold(usable, folds=data.folds, seed=data.split_seed, sparse_classes=data.sparse_classes)
        part_names = np.where(parts >= 0, np.char.add("fold", parts.astype(str)), "excluded")
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


def cmd_synth(args: argparse.Namespace) -> int:
    root = synthetic.make_dataset(args.out, classes=args.classes, files_per_class=args.files_per_class, seed=args.seed)
    print(f"wrote a SYNTHETIC dataset of {args.classes} classes x {args.files_per_class} files to {root}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.out:
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
        return p

    p = data_command("inspect", "list classes, files, durations and unreadable files of a dataset")
    p.set_defaults(func=cmd_inspect)
    p = data_command("preview", "draw a grid of the model inputs of one batch")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write (default preview.png)")
    p.add_argument("--n", type=int, default=16, help="how many inputs (default 16)")
    p.add_argument("--augment", action="store_true", help="show augmented training variants")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview)

    p = data_command("split", "assign files to train/val/test (or k folds), stratified and grouped by recording")
    p.add_argument("--out", type=Path, default=Path("splits.csv"), help="CSV to write (default splits.csv)")
    p.add_argument("--kfold", action="store_true", help="k folds instead of train/val/test")
    p.add_argument("--folds", type=int, help="number of folds (default 5)")
    p.add_argument("--val", type=float, help="validation fraction (default 0.15)")
    p.add_argument("--test", type=float, help="test fraction (default 0.15)")
    p.add_argument("--seed", type=int, help="split seed (default 0)")
    p.add_argument("--sparse-classes", choices=["error", "drop"],
                   help="what to do with classes recorded only once (default error)")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("synth", help="write a small SYNTHETIC dataset (for demos and tests)")
    p.add_argument("out", type=Path)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--files-per-class", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("config", help="print (or write) the configuration with its defaults")
    p.add_argument("--config", type=Path, help="start from this TOML instead of the defaults")
    p.add_argument("--out", type=Path, help="write it here instead of printing")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
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
