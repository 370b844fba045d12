"""The ``echoengine`` command line: its subcommands and their options, each declared once.

An option that sets a config value is not written here: every field of the
config sections (:mod:`echoengine.config`) whose ``metadata`` holds a
``"help"`` text is an option of the commands it names, typed from the field's
annotation (a ``bool`` gives ``--x`` and ``--no-x``; a tuple, a
comma-separated list), its help ending with the dataclass default. Such an
option defaults to ``None``: given, it overrides the ``--config`` file's
value; left out, it leaves it (:func:`config_changes`). The metadata keys:

``help``
    The help text (required).
``flag``
    The option's name, if not ``--field-name``.
``choices``
    The values it takes, where there is a fixed set.
``metavar``
    The value's name in the usage.
``commands``
    The subcommands that take it (default :data:`TRAINING_COMMANDS`).

The other options (paths, outputs, switches of one command) are written in
:func:`build_parser`. Only argparse and the config are imported, so that
``echoengine --help`` answers at once.

Examples
--------
>>> args = parse(["train", "data", "--out", "bundle", "--lr", "0.01", "--no-refit", "--birdnet-blocks", "3-5"])
>>> config_changes(args)
{'model': {'birdnet_blocks': ['3-5']}, 'train': {'learning_rate': 0.01, 'refit': False}}
"""

from __future__ import annotations

import argparse
import difflib
import sys
import typing
from pathlib import Path

from echoengine.cli_config import TRAINING_COMMANDS, ConfigOption, add_config_options, config_changes, config_options

__all__ = ["DEFAULT_CACHE", "TRAINING_COMMANDS", "ConfigOption", "add_config_options", "build_parser", "config_changes",
           "config_options", "parse"]

#: Where features are cached unless ``--cache-dir`` (or, for train and cv, ``--config``'s ``data.cache_dir``) says
#: otherwise; a bundle's config never does.
DEFAULT_CACHE = Path.home() / ".cache" / "echoengine" / "features"


def _positive_int(text: str) -> int:
    """A whole number of at least 1 (argparse's type), or argparse's one-line error.

    Examples
    --------
    >>> _positive_int("2")
    2
    >>> _positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be at least 1, got 0
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


#: ``--threshold bundle``: each class's threshold is the bundle's (its thresholds.csv, else 0.5), said explicitly.
BUNDLE_THRESHOLDS = "bundle"
#: serve's scoring options that, not given with --candidate or --activate, come from the store's active model.
INHERITED = ("overlap", "min_window", "threshold", "top_n", "species", "exclude", "merge_gap")


def _threshold(text: str) -> float | str:
    """A threshold for every class, or ``bundle`` (argparse's type; the range is checked where it is used).

    Examples
    --------
    >>> _threshold("0.3"), _threshold("bundle")
    (0.3, 'bundle')
    """
    if text == BUNDLE_THRESHOLDS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a threshold: {text!r} (a number in [0, 1], or bundle: the bundle's "
                                         "thresholds.csv, else 0.5)") from None


def _range(kind: type) -> typing.Callable[[str], tuple]:
    """A range option of ``kind`` values: ``"1-4"`` or ``"-5..15"`` -> ``(low, high)``; ``"3"`` -> ``(3, 3)``."""
    def parse(text: str) -> tuple:
        low, sep, high = text.partition("..") if ".." in text else text.rpartition("-")
        try:
            return (kind(low), kind(high)) if sep else (kind(text), kind(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a range: {text!r} (write it as 1-4 or -5..15)") from None
    return parse


class _HelpFormatter(argparse.HelpFormatter):
    """Help that ends an option's text with its default, where it has one and the text does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and default is not None and default is not False and default != argparse.SUPPRESS \
                and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _command(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose description is its one-line summary."""
    return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)


def _data_command(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand that reads a dataset (DATA), with ``--config``."""
    p = _command(sub, name, text)
    p.add_argument("data", type=Path, help="folder per class, flat folder, ESC-50-style CSV or ESC-50 folder")
    p.add_argument("--config", type=Path, help="a TOML config (default: the Echo pipeline's); the config options "
                   "given on the command line override it")
    return p


def _cache_options(p: argparse.ArgumentParser) -> None:
    """Where features are cached, or not at all: a setting of this machine, never of a bundle."""
    p.add_argument("--cache-dir", type=Path, help=f"feature cache (default {DEFAULT_CACHE})")
    p.add_argument("--no-cache", action="store_true", help="compute features every time")


def _annotation_options(p: argparse.ArgumentParser) -> None:
    """The annotation tables of multi-label data."""
    g = p.add_argument_group("annotation tables (multi-label)")
    g.add_argument("--annotations", type=Path, help="annotation table or folder of them (default: DATA)")
    g.add_argument("--negatives", type=Path, help="a table of verified negatives (boxes NOT holding their species)")
    g.add_argument("--columns", help="CSV annotation columns, ours=theirs: file, label, start, end, low_freq, "
                   "high_freq (RFCx names and these are found by themselves)")


def _bundle_source(text: str) -> str | Path:
    """A bundle argument: a built-in's name stays text (``birdnet``: :mod:`echoengine.builtin`), else a folder.

    Examples
    --------
    >>> _bundle_source("birdnet"), _bundle_source("./birdnet")
    ('birdnet', PosixPath('birdnet'))
    """
    from echoengine.builtin import builtin_spec  # at parse time of a bundle's command only

    return text if builtin_spec(text) is not None else Path(text)


def _bundle_command(sub: argparse._SubParsersAction, name: str, text: str, what: str) -> argparse.ArgumentParser:
    """A subcommand that runs a bundle, or each fold bundle of a CV folder (``what`` says how)."""
    p = _command(sub, name, text)
    p.add_argument("bundle", type=_bundle_source, help=f"a bundle, or a CV folder ({what}); birdnet: BirdNET "
                   "V2.4's own 6,522 species (built in, CC BY-NC-SA 4.0; a folder of that name is ./birdnet)")
    return p


def _sensitivity_option(p: argparse.ArgumentParser) -> None:
    """BirdNET-Analyzer's sigmoid sensitivity, for the built-in birdnet."""
    p.add_argument("--sensitivity", type=float, help="with the built-in birdnet: BirdNET-Analyzer's sigmoid "
                   "sensitivity, 0.5 to 1.5 (higher: more detections; default 1.0)")


def _place_options(p: argparse.ArgumentParser) -> None:
    """Where and when the recordings were made: BirdNET's occurrence model keeps the species expected there."""
    g = p.add_argument_group("place and season (BirdNET's occurrence model; the built-in birdnet's species)")
    g.add_argument("--lat", type=float, help="latitude of the recordings (degrees)")
    g.add_argument("--lon", type=float, help="longitude of the recordings (degrees)")
    g.add_argument("--week", type=int, help="week of the year, 1-48 (4 a month); -1: the whole year (default)")
    g.add_argument("--date", metavar="YYYY-MM-DD", help="date of the recordings (gives the week)")
    g.add_argument("--location-filter-threshold", type=float, metavar="SCORE",
                   help="occurrence score a species needs to be expected (default 0.03, BirdNET-Analyzer's)")
    g.add_argument("--occurrence", type=Path, metavar="FILE", help="any bundle: a CSV of species, lat_min, lat_max, "
                   "lon_min, lon_max (or site), months (e.g. 4-9) and optionally weight saying where and when they "
                   "occur, instead of BirdNET's model")
    g.add_argument("--site", metavar="NAME", help="the recordings' site: the --occurrence table's rows of this site "
                   "hold (with or without --lat and --lon)")


def _dataset_commands(sub: argparse._SubParsersAction) -> None:
    """inspect, preview and split."""
    _data_command(sub, "inspect", "list classes, files, durations and unreadable files of a dataset")
    p = _data_command(sub, "preview", "draw a grid of the model inputs of one batch")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write")
    p.add_argument("--n", type=int, default=16, help="how many inputs")
    p.add_argument("--augment", action="store_true", help="show augmented training variants")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=int, default=0, help="which files are drawn, and their variants")
    p = _data_command(sub, "split", "assign files to train/val/test (or k folds), stratified and grouped by recording")
    p.add_argument("--out", type=Path, default=Path("splits.csv"), help="CSV to write")
    p.add_argument("--kfold", action="store_true", help="k folds instead of train/val/test")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _training_commands(sub: argparse._SubParsersAction) -> None:
    """train and cv: their own options; those of the config come from its fields."""
    train = _data_command(sub, "train", "train a classifier and write a model bundle (evaluated on a held-out test "
                          "part)")
    train.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    train.add_argument("--distributed", type=_positive_int, metavar="N", help="train in N processes on this machine "
                       "(PyTorch DDP through torchrun: gloo on CPUs, nccl on GPUs); --batch-size is the batch of all "
                       "N together. Across machines, run torchrun ... -m echoengine train on each instead")
    cv = _data_command(sub, "cv", "k-fold cross-validation grouped by source recording; keeps the fold models")
    cv.add_argument("--out", type=Path, required=True, help="folder for the fold bundles and the summary")
    for p in (train, cv):
        p.add_argument("--finetune", action="store_true", help="with --backbone birdnet: train the pretrained "
                       "network too, at 0.1x the head's rate (change with --backbone-lr-factor)")
        _cache_options(p)
        p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
        p.add_argument("--overwrite", action="store_true",
                       help="replace the earlier run in --out (every file of it is removed first)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        _annotation_options(p)


def _ray_options(g: argparse._ArgumentGroup, what: str) -> None:
    """Where a command's work runs: this process, or Ray (a local instance, or a cluster)."""
    g.add_argument("--engine", choices=["local", "ray"], default="local", help=f"{what} in this process (local) or "
                   "spread over Ray workers (ray): the same results")
    g.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (HOST:6379, ray://HOST:10001 or "
                   "auto); without it, a local Ray instance runs for the command")
    g.add_argument("--ray-workers", type=_positive_int, metavar="N", help="CPUs of the local Ray instance, or the "
                   "most tasks at a time on a cluster (default: every CPU)")


def _embed_command(sub: argparse._SubParsersAction) -> None:
    """embed: a head's embeddings computed ahead into the feature cache."""
    p = _data_command(sub, "embed", "compute the embeddings a head on an embedder trains on into the feature cache, "
                      "here or on Ray (then train with the same config and --cache-dir)")
    _cache_options(p)
    _ray_options(p.add_argument_group("scale-out (pip install 'echoengine[distributed]')"), "embed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _scoring_commands(sub: argparse._SubParsersAction) -> None:
    """evaluate and predict: a bundle (or a CV folder) run on labelled data or on files."""
    p = _bundle_command(sub, "evaluate", "score a bundle (or a CV folder as an ensemble) on labelled data",
                        "its fold models as an ensemble")
    p.add_argument("data", type=Path, help="labelled data (any DATA of train)")
    p.add_argument("--out", type=Path, help="report folder (default BUNDLE/evaluate-<data>)")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier run in --out")
    _cache_options(p)
    _annotation_options(p)
    p = _bundle_command(sub, "predict", "species and probability of audio files (mean over 5 s windows)",
                        "its fold models as an ensemble")
    p.add_argument("files", type=Path, nargs="+", help="audio files or folders")
    p.add_argument("--top-k", type=int, default=3, help="how many species per file")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="how the results are printed")
    p.add_argument("--onnx", action="store_true", help="run the exported model.onnx with onnxruntime")
    _min_confidence_option(p)
    _sensitivity_option(p)
    _place_options(p)
    _cache_options(p)


def _min_confidence_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P", help="a model of a taxonomy: name the "
                   "deepest rank whose probability reaches P (e.g. the genus when no species does)")


def _scoring_options(p: argparse.ArgumentParser) -> None:
    """How detect and serve score: windows, thresholds, species filters, event merging, batches, ONNX."""
    p.add_argument("--overlap", type=float, default=0.0, help="seconds shared by consecutive windows")
    p.add_argument("--min-window", type=float, default=0.0, metavar="SECONDS",
                   help="drop a file's last, partial window when it holds less audio than this")
    p.add_argument("--threshold", "--min-conf", type=_threshold, help="one score threshold for all classes, in "
                   "[0, 1], or 'bundle': the bundle's thresholds.csv, else 0.5 (the default; the built-in birdnet: "
                   "0.1, BirdNET-Analyzer's min_conf)")
    p.add_argument("--top-n", type=int, default=0, help="only a window's N best classes may detect (default: all)")
    p.add_argument("--species", action="append", metavar="NAMES|FILE",
                   help="report only these species (comma-separated, or a file of one per line)")
    p.add_argument("--exclude", action="append", metavar="NAMES|FILE", help="never report these species")
    p.add_argument("--merge-gap", type=float, default=0.0, metavar="SECONDS",
                   help="merge detections of a species closer than this (0: overlapping or touching)")
    p.add_argument("--batch-size", type=int, default=16, help="windows passed to the model at a time")
    p.add_argument("--onnx", action="store_true", help="score with the exported model.onnx (onnxruntime)")
    _sensitivity_option(p)


def _detect_command(sub: argparse._SubParsersAction) -> None:
    """detect: the scoring options, the output folder and its run."""
    p = _bundle_command(sub, "detect", "timestamped detections over long recordings: CSV, Raven, Audacity, JSON",
                        "its fold models as an ensemble")
    p.add_argument("paths", type=Path, nargs="+", help="audio files or folders (walked recursively)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: new or empty, unless --resume or --overwrite")
    _scoring_options(p)
    _min_confidence_option(p)
    _place_options(p)
    p.add_argument("--keep-scores", type=float, metavar="SCORE", help="scores.parquet keeps the window scores "
                   "reaching SCORE (0: every window and class; default: all, the built-in birdnet's from 0.01)")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="processes scoring batches side by side, one "
                   "thread each (0: one per core; 1: this process alone, on every core's thread)")
    p.add_argument("--workers", type=int, default=0, help="processes decoding audio and computing features beside "
                   "the model's (0: in the main process, the fastest on 2 cores; more cores gain from them)")
    g = p.add_argument_group("scale-out (pip install 'echoengine[distributed]')")
    _ray_options(g, "score the files")
    g.add_argument("--ray-chunk-seconds", type=float, default=600.0, metavar="SECONDS",
                   help="audio per Ray task: short files are grouped up to it, a longer file is a task of its own")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="keep the files an interrupted run into --out finished")
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an earlier run's outputs in --out (only the files detect wrote)")
    p.add_argument("--summary", action="store_true", help="print detections per species and plot them over time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _serve_command(sub: argparse._SubParsersAction) -> None:
    """serve: the HTTP API over a store folder and a database, with detect's scoring options."""
    p = _bundle_command(sub, "serve", "detection service: HTTP API, background scoring, SQLite or PostgreSQL",
                        "its fold models as an ensemble")
    p.add_argument("--store", type=Path, required=True,
                   help="folder for the uploaded audio (STORE/audio/) and the default database (STORE/echo.db)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL, e.g. postgresql+psycopg://user@host/echo "
                   "(default: SQLite in STORE/echo.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--api-key-file", type=Path, metavar="FILE",
                   help="file whose first line is the key writes need (header X-API-Key); without it, only this "
                   "machine may write")
    p.add_argument("--public-reads", action="store_true",
                   help="let every client read (default: this machine, or clients that give the key)")
    p.add_argument("--max-upload-mb", type=float, default=512.0, metavar="MB", help="largest upload accepted")
    p.add_argument("--mqtt", metavar="mqtt://HOST:PORT/TOPIC", help="also queue the audio of sensor messages on "
                   "this MQTT topic (Project Echo's, or echoengine.audio/1); mqtt://USER:PASSWORD@HOST... to log in, "
                   "mqtts:// for TLS")
    p.add_argument("--mqtt-out", metavar="TOPIC", help="publish each detection as JSON (with its link) to this topic "
                   "of the --mqtt broker")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="how much the server logs")
    p.add_argument("--scoring-processes", type=_positive_int, metavar="N",
                   help="processes that score side by side, each with its copy of the model and cores / N threads "
                   "(default: 2 on 2 or more cores, else 1)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--candidate", action="store_true", help="register BUNDLE beside the store's active model "
                       "without activating it (POST /api/models/ID/activate promotes it)")
    which.add_argument("--activate", action="store_true", help="make BUNDLE the store's active model even if another "
                       "was activated since it was last served")
    _scoring_options(p)
    # not given: detect's defaults, or with --candidate/--activate the active model's (cmd_serve tells them apart)
    p.set_defaults(**{name: None for name in INHERITED})
    p.epilog = ("With --candidate or --activate, the scoring options not given (--threshold, --top-n, --overlap, "
                "--min-window, --species, --exclude, --merge-gap) are those of the store's active model, so that "
                "a promoted model scores as the one it replaces; --threshold bundle asks for BUNDLE's own "
                "thresholds.")
    g = p.add_argument_group("place and season (BirdNET's occurrence model; the built-in birdnet's species)")
    g.add_argument("--location-filter", action="store_true", help="drop the detections of species not expected at "
                   "each recording's position (its own, else its sensor's) and date")
    g.add_argument("--location-filter-threshold", type=float, metavar="SCORE",
                   help="occurrence score a species needs to be expected (default 0.03, BirdNET-Analyzer's)")
    g.add_argument("--occurrence", type=Path, metavar="FILE", help="any bundle: a CSV of species, lat_min, lat_max, "
                   "lon_min, lon_max, months saying where and when they occur, instead of BirdNET's model")


def _mix_command(sub: argparse._SubParsersAction) -> None:
    """mix: soundscapes from labelled clips over field recordings or noise."""
    p = _command(sub, "mix", "build soundscapes (and their Raven tables) from labelled clips")
    p.add_argument("clips", type=Path, help="labelled clips (any DATA: folder per class, ESC-50 CSV or folder)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the soundscapes to")
    p.add_argument("--count", type=int, default=50, help="soundscapes to write (for training, with --test-fraction)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per soundscape")
    p.add_argument("--events", type=_range(int), default="1-4", help="events per soundscape, a range")
    p.add_argument("--snr", type=_range(float), default="-5..15", help="event-to-background ratio in dB, a range")
    p.add_argument("--background", type=Path, nargs="+", help="recordings or folders to mix into (default: noise)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="also write test soundscapes from other source recordings and backgrounds (train/, test/)")
    p.add_argument("--seed", type=int, default=0, help="draws of the soundscapes")
    p.add_argument("--split-seed", type=int, default=0,
                   help="draw of the train/test split of sources (keep it to mix more soundscapes of one side)")
    p.add_argument("--config", type=Path, help="a TOML config (its [audio] sets the sample rate)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def _bundle_commands(sub: argparse._SubParsersAction) -> None:
    """calibrate and export: files a bundle (or each fold of a CV folder) gets beside its weights."""
    p = _bundle_command(sub, "calibrate", "per-class detection thresholds: F1-optimal on labelled data, or for a "
                        "target precision from reviewed detections (--reviews)", "thresholds for the ensemble")
    p.add_argument("data", type=Path, nargs="?", help="labelled validation data (not the training data)")
    _cache_options(p)
    _annotation_options(p)
    g = p.add_argument_group("from reviewed detections (instead of DATA)")
    g.add_argument("--reviews", type=Path, metavar="STORE|EXPORT", help="a store of echoengine serve, or a folder "
                   "of echoengine reviews export: each species' threshold for --precision, fitted on its reviews")
    g.add_argument("--db", metavar="URL", help="the store's database URL (default: SQLite in STORE/echo.db)")
    g.add_argument("--precision", type=float, help="the precision to reach (default 0.9)")
    g.add_argument("--min-reviews", type=int, help="fewer reviews of a species (or fewer than 3 of either verdict) "
                   "keep its threshold (default 20)")
    g.add_argument("--exclude", type=Path, action="append", metavar="EXPORT", help="leave out the recordings of "
                   "this export (e.g. the one the bundle was trained on; those in BUNDLE's splits.csv always are)")
    _judged_options(g, threshold=False)
    p = _bundle_command(sub, "export", "write BUNDLE/model.onnx (raw waveform in, probabilities out) and check it",
                        "each fold is exported")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the exported graph's format")
    p.add_argument("--check", type=Path, nargs="+", help="audio files for the parity check (default: test files)")
    p.add_argument("--out", type=Path, help="with the built-in birdnet: the bundle folder to write it into, with "
                   "its graph (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="with --out: replace an earlier bundle there")
    _sensitivity_option(p)


def _species_command(sub: argparse._SubParsersAction) -> None:
    """species: BirdNET's species expected at a place and week (BirdNET-Analyzer's species command)."""
    p = _command(sub, "species", "list the species BirdNET's occurrence model expects at a place and week "
                 "(BirdNET V2.4, CC BY-NC-SA 4.0)")
    p.add_argument("--lat", type=float, required=True, help="latitude (degrees)")
    p.add_argument("--lon", type=float, required=True, help="longitude (degrees)")
    p.add_argument("--week", type=int, help="week of the year, 1-48 (4 a month); -1: the whole year (default)")
    p.add_argument("--date", metavar="YYYY-MM-DD", help="a date (gives the week)")
    p.add_argument("--threshold", type=float, metavar="SCORE", dest="location_filter_threshold",
                   help="occurrence score a species needs (default 0.03, BirdNET-Analyzer's)")
    p.add_argument("--out", type=Path, help="also write the list, one Scientific name_Common name a line (what "
                   "--species FILE of detect and serve takes)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _judged_options(p, *, threshold: bool) -> None:
    """reviews compare and calibrate --reviews: options that replace those the store served a bundle with."""
    where = "instead of the one the store served the bundle with (default: as served; never served: detect's)"
    if threshold:
        p.add_argument("--threshold", type=_threshold, help="one threshold for every class, or 'bundle': each "
                       f"bundle's thresholds.csv (else 0.5), {where}")
    p.add_argument("--top-n", type=int, metavar="N", help=f"only a window's N best classes detect (0: all), {where}")
    p.add_argument("--overlap", type=float, metavar="SECONDS", help=f"seconds shared by consecutive windows, {where}")


def _reviews_command(sub: argparse._SubParsersAction) -> None:
    """reviews export and reviews compare: what reviewers said of a store's detections, as data and as a test."""
    p = _command(sub, "reviews", "reviewed detections of a store: export them as training data, compare models")
    actions = p.add_subparsers(dest="action", required=True, metavar="{export,compare}", help="what to do")
    e = actions.add_parser("export", formatter_class=_HelpFormatter, help="confirmed and corrected detections as "
                           "labelled clips, rejected ones as verified negatives, with Raven tables",
                           description="write the store's reviewed detections as the data train reads: "
                           "OUT/clips (train OUT/clips), OUT/recordings and OUT/negatives (train --multilabel "
                           "OUT/recordings --negatives OUT/negatives --unlabeled ignore), OUT/reviews.csv")
    e.add_argument("--out", type=Path, required=True, help="the export folder (re-exporting into it changes only "
                   "what changed)")
    e.add_argument("--with", dest="with_data", type=Path, metavar="DATA", help="also write OUT/combined.csv: DATA's "
                   "labelled files and the exported clips (train OUT/combined.csv --allow-outside-paths)")
    e.add_argument("--group-regex", default="", metavar="REGEX", help="with --with: the regex on DATA's file names "
                   "naming their source recording (as train's), kept in combined.csv so that splits keep a "
                   "recording's clips together")
    e.add_argument("--overwrite", action="store_true", help="replace files of an earlier export that differ, and "
                   "remove those no longer exported")
    c = actions.add_parser("compare", formatter_class=_HelpFormatter, help="two models on the reviewed detections "
                           "neither trained on: precision at each one's thresholds, recall, counts per species",
                           description="score the store's reviewed detections that neither bundle trained on with "
                           "both, and print per species precision at each bundle's thresholds and recall")
    c.add_argument("old", type=Path, help="a bundle (or CV folder)")
    c.add_argument("new", type=Path, help="another bundle (or CV folder)")
    c.add_argument("--exclude", type=Path, action="append", metavar="EXPORT", help="leave out the recordings of "
                   "this export (those in either bundle's splits.csv always are)")
    c.add_argument("--out", type=Path, help="also write the table as CSV")
    _judged_options(c, threshold=True)
    for q in (e, c):
        q.add_argument("--store", type=Path, required=True, help="the store folder of echoengine serve")
        q.add_argument("--db", metavar="URL", help="the store's database URL (default: SQLite in STORE/echo.db)")
        q.add_argument("--since", metavar="TIME", help="only detections from this time on (ISO 8601, UTC if no zone)")
        q.add_argument("--until", metavar="TIME", help="only detections up to this time (ISO 8601)")


def _making_commands(sub: argparse._SubParsersAction) -> None:
    """demo, synth and config: commands that make a demo, a dataset or a config file."""
    p = _command(sub, "demo", "SYNTHETIC end-to-end demo: make data, train small_cnn, evaluate, predict")
    p.add_argument("--out", type=Path, default=Path("echoengine-demo"), help="folder")
    p.add_argument("--epochs", type=int, default=20, help="most epochs to train")
    p.add_argument("--files-per-class", type=int, default=16, help="synthetic files per class")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = _command(sub, "synth", "write a small SYNTHETIC dataset (for demos and tests)")
    p.add_argument("out", type=Path, help="folder to write")
    p.add_argument("--classes", type=int, default=4, help="how many classes")
    p.add_argument("--files-per-class", type=int, default=6, help="files per class")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.add_argument("--seed", type=int, default=0, help="seed of the sounds")
    p = _command(sub, "config", "print (or write) the configuration with its defaults")
    p.add_argument("--config", type=Path, help="start from this TOML instead of the defaults")
    p.add_argument("--out", type=Path, help="write it here instead of printing")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def build_parser() -> argparse.ArgumentParser:
    """The ``echoengine`` parser: every subcommand, with the config options of each from the config's fields.

    Examples
    --------
    >>> build_parser().parse_args(["cv", "data", "--out", "cv", "--folds", "3"]).folds
    3
    """
    parser = argparse.ArgumentParser(prog="echoengine", description="Sound classification for ecology.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_dataset_commands, _training_commands, _embed_command, _scoring_commands, _detect_command,
                _serve_command, _mix_command, _bundle_commands, _species_command, _reviews_command, _making_commands):
        add(sub)
    for name, command in sub.choices.items():
        add_config_options(command, name)
    return parser


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
