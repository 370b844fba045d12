"""Datasets as tables of samples and checks of their files (their splits: :mod:`echoengine.splits`).

A catalog is a :class:`pandas.DataFrame` with one row per sample and the
columns ``path`` (absolute), ``label`` (empty when unknown) and ``group`` (the
source recording: clips of one group never sit on both sides of a split),
plus ``fold`` when the dataset defines one. It is read from

* a folder per class (``DATA/<class>/**/*.wav``; hidden files ignored,
  class names sorted, non-ASCII names kept), or a flat folder of unlabelled
  files;
* an ESC-50-style CSV (``filename``, ``category`` or ``target``, optional
  ``fold`` and ``src_file``), or a folder holding ``meta/*.csv`` and
  ``audio/`` as ESC-50 does.

Examples
--------
>>> group_names(["XC1234_part1.wav", "XC1234_part2.wav", "XC98_a.wav"], r"^(XC[0-9]+)")
['XC1234', 'XC1234', 'XC98']
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import audio, formats
from echoengine.config import AUDIO_EXTENSIONS, AudioConfig, DataConfig
from echoengine.errors import AudioError, DataError

__all__ = [
    "check_files",
    "class_names",
    "describe",
    "from_csv",
    "from_folder",
    "group_names",
    "load_catalog",
    "scan",
]

COLUMNS = ["path", "label", "group"]
logger = logging.getLogger("echoengine")


def _group_of(name: str, pattern: re.Pattern | None) -> str:
    if pattern is None:
        return os.path.splitext(name)[0]
    name = os.path.basename(name)  # a table may name files by path: the regex reads the file's own name
    match = pattern.search(name)
    if match is None:
        raise DataError(f"group regex {pattern.pattern!r} does not match the file name {name!r}")
    return match.group(1) if pattern.groups else match.group(0)


def _compile(group_regex: str) -> re.Pattern | None:
    if not group_regex:
        return None
    try:
        return re.compile(group_regex)
    except re.error as exc:
        raise DataError(f"invalid group regex {group_regex!r}: {exc}") from None


def group_names(names: Sequence[str], group_regex: str = "") -> list[str]:
    r"""The source recording of each file name: the regex's first group (or whole match), else the name's stem.

    Examples
    --------
    >>> group_names(["site1_rec2_003.wav"], r"^(.+_rec\d+)_"), group_names(["x.flac"])
    (['site1_rec2'], ['x'])
    >>> group_names(["/data/site1/site1_rec2_003.wav"], r"^(.+_rec\d+)_")  # a path: the regex reads its name
    ['site1_rec2']
    """
    pattern = _compile(group_regex)
    return [_group_of(name, pattern) for name in names]


def from_folder(
    root: str | Path, *, extensions: tuple[str, ...] = AUDIO_EXTENSIONS, group_regex: str = ""
) -> pd.DataFrame:
    """Collect the audio files under ``root``; a file's class is its top-level folder.

    Files directly in ``root`` get an empty label (unlabelled). Hidden files
    and folders (names starting with ``.``) are skipped.

    Parameters
    ----------
    root : str or Path
    extensions : tuple of str
        Lower-case extensions to collect.
    group_regex : str
        Regular expression on the file name naming its source recording
        (its first group, or the whole match); by default each file is its
        own group.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    pattern = _compile(group_regex)
    rows = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        relative = Path(folder).relative_to(root)
        label = relative.parts[0] if relative.parts else ""
        for name in sorted(files):
            if audio.is_audio_file(name, extensions):
                group = _group_of(name, pattern)
                rows.append((str((Path(folder) / name).absolute()), label, group))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["label", "path"], ignore_index=True)


def _find_audio_dir(csv_path: Path, first_file: str) -> Path:
    for candidate in (csv_path.parent.parent / "audio", csv_path.parent / "audio", csv_path.parent):
        if (candidate / first_file).exists():
            return candidate
    raise DataError(
        f"{csv_path}: cannot find the audio folder holding {first_file!r} "
        "(looked in ../audio, ./audio and the CSV's folder); pass the audio folder explicitly"
    )


def _refuse_outside_paths(csv_path: Path, folder: Path, names: pd.Series) -> None:
    """Raise when a row of the CSV names a file outside ``folder`` (``../x.wav``, an absolute path elsewhere)."""
    root = os.path.normpath(folder.absolute())
    outside = [i for i, name in enumerate(names)
               if os.path.commonpath([root, os.path.normpath(os.path.join(root, name))]) != root]
    if outside:
        first = outside[0]
        more = f" (and {len(outside) - 1} more row(s))" if len(outside) > 1 else ""
        raise DataError(f"{csv_path}: row {first + 1} (line {first + 2}) names {names.iloc[first]!r}, outside the "
                        f"dataset folder {folder}{more}; move the audio into that folder, or allow such rows with "
                        "--allow-outside-paths (data.allow_outside_paths = true)")


def from_csv(csv_path: str | Path, *, audio_dir: str | Path | None = None, group_regex: str = "",
             allow_outside_paths: bool = False) -> pd.DataFrame:
    """Read an ESC-50-style metadata CSV.

    Columns: ``filename`` (required), ``category`` or ``target`` (the label),
    optional ``fold`` and ``src_file`` (the source recording, used as group
    unless ``group_regex`` is given).

    Raises
    ------
    DataError
        The CSV cannot be read or lacks a column, or (unless
        ``allow_outside_paths``) a row names a file outside the audio folder,
        such as ``../../x.wav`` or an absolute path elsewhere: the message
        names the CSV and the row.
    """
    csv_path = Path(csv_path)
    try:
        meta = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read the CSV ({exc})") from None
    if "filename" not in meta.columns:
        raise DataError(f"{csv_path}: no 'filename' column (columns: {', '.join(meta.columns)})")
    label_column = next((c for c in ("category", "label", "target") if c in meta.columns), None)
    if label_column is None:
        raise DataError(f"{csv_path}: no label column ('category', 'label' or 'target')")
    if meta.empty:
        raise DataError(f"{csv_path}: the CSV has no rows")
    folder = Path(audio_dir) if audio_dir else _find_audio_dir(csv_path, meta["filename"].iloc[0])
    if not allow_outside_paths:
        _refuse_outside_paths(csv_path, folder, meta["filename"])
    pattern = _compile(group_regex)
    if pattern is None and "src_file" in meta.columns:
        stems = [_group_of(name, None) for name in meta["filename"]]
        groups = [src if src.strip() else stem for src, stem in zip(meta["src_file"], stems)]
    else:
        groups = [_group_of(name, pattern) for name in meta["filename"]]
    table = pd.DataFrame({
        "path": [str((folder / name).absolute()) for name in meta["filename"]],
        "label": meta[label_column].to_numpy(),
        "group": groups,
    })
    if "fold" in meta.columns:
        table["fold"] = pd.to_numeric(meta["fold"], errors="coerce").astype("Int64")
    return table.sort_values(["label", "path"], ignore_index=True)


def load_catalog(source: str | Path, config: DataConfig | None = None) -> pd.DataFrame:
    """Read a dataset from a CSV, an ESC-50-style folder, a folder of files or one audio file.

    A single audio file is a dataset of one unlabelled file.

    Examples
    --------
    >>> load_catalog("no/such/place")
    Traceback (most recent call last):
    ...
    echoengine.errors.DataError: no/such/place: no such file or folder
    >>> import tempfile
    >>> song = Path(tempfile.mkdtemp()) / "song.mp3"
    >>> _ = song.write_bytes(b"")
    >>> load_catalog(song)[["label", "group"]].to_dict("records")
    [{'label': '', 'group': 'song'}]
    """
    config = config or DataConfig()
    source = Path(source)
    outside = config.allow_outside_paths
    if source.is_file() and audio.is_audio_file(source, config.extensions):  # or a photo, for data.kind images
        group = _group_of(source.name, _compile(config.group_regex))
        return pd.DataFrame([(str(source.absolute()), "", group)], columns=COLUMNS)
    if source.is_file():
        return from_csv(source, group_regex=config.group_regex, allow_outside_paths=outside)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    metas = sorted((source / "meta").glob("*.csv")) if (source / "meta").is_dir() else []
    if metas and (source / "audio").is_dir():
        return from_csv(metas[0], audio_dir=source / "audio", group_regex=config.group_regex,
                        allow_outside_paths=outside)
    return from_folder(source, extensions=config.extensions, group_regex=config.group_regex)


ANNOTATION_COLUMNS = ["path", "start", "end", "low_freq", "high_freq", "label", "positive"]
# RFCx-style CSV columns (the Rainforest Connection species challenge) -> ours
RFCX_COLUMNS = {"recording_id": "file", "species_id": "label", "t_min": "start", "t_max": "end",
                "f_min": "low_freq", "f_max": "high_freq"}
# our column -> names a CSV may use for it (RFCx's first)
_CSV_NAMES = {
    "file": ("recording_id", "file", "path", "filename"), "label": ("species_id", "label", "species"),
    "start": ("t_min", "start", "begin"), "end": ("t_max", "end", "stop"),
    "low_freq": ("f_min", "low_freq"), "high_freq": ("f_max", "high_freq"),
}


def _audio_for(name: str, folders: list[Path], index: dict[str, Path]) -> Path | None:
    """The audio file ``name`` (with or without its extension): in a folder, else anywhere below ``audio_dir``."""
    for folder in folders:
        if (folder / name).is_file() and audio.is_audio_file(folder / name):
            return folder / name
        for extension in AUDIO_EXTENSIONS:
            for candidate in (folder / f"{name}{extension}", folder / f"{name}{extension.upper()}"):
                if candidate.is_file():
                    return candidate
    return index.get(name)


def _audio_index(folder: Path | None) -> dict[str, Path]:
    """Audio files below a folder by name and by stem (the first found of a stem)."""
    index: dict[str, Path] = {}
    if folder is None or not folder.is_dir():
        return index
    for path in sorted(folder.rglob("*")):
        if path.is_file() and audio.is_audio_file(path):
            index.setdefault(path.name, path)
            index.setdefault(path.stem, path)
    return index


_TABLE_SUFFIX = re.compile(r"(\.Table\.\d+)?(\.BirdNET)?(\.selections?)?(\.table)?\.(txt|csv)$", re.IGNORECASE)


def _recording_of_table(table: Path) -> str:
    """The recording a table of one recording is named after: ``site1.Table.1.selections.txt`` -> ``site1``."""
    return _TABLE_SUFFIX.sub("", table.name)


def _annotation_kind(path: Path) -> str:
    if path.suffix.lower() == ".csv":
        return "csv"
    with open(path, encoding="utf-8-sig") as file:
        first = file.readline()
    return "raven" if "Begin Time (s)" in first else "audacity"


def read_annotations(
    source: str | Path,
    *,
    audio_dir: str | Path | None = None,
    columns: dict[str, str] | None = None,
    positive: bool = True,
) -> pd.DataFrame:
    """Time-frequency boxes of annotation tables, one row per box.

    Reads Raven selection tables (a header with ``Begin Time (s)``), Audacity
    label tracks (with the optional ``\\ low high`` frequency lines) and
    CSVs with one box per row (RFCx-style ``recording_id, species_id, t_min,
    f_min, t_max, f_max`` by default; ``columns`` maps our names ``file,
    label, start, end, low_freq, high_freq`` to others). ``source`` is a
    table or a folder of them (``*.txt`` and ``*.csv``, recursively).

    A box's audio file is the table's ``Begin Path`` or ``Begin File``
    column, the CSV's file column, or, for a table of one recording, the
    audio file named like the table (``site1.txt`` or
    ``site1.Table.1.selections.txt`` for ``site1.flac``), found in
    ``audio_dir`` or the table's folder. Boxes of a recording that cannot be
    found are left out with a one-line warning naming the table.

    Parameters
    ----------
    positive : bool
        False for a table of verified negatives (boxes known NOT to hold their species).

    Returns
    -------
    DataFrame
        ``path, start, end, low_freq, high_freq, label, positive`` (frequencies NaN when unknown).

    Raises
    ------
    DataError
        A table that cannot be parsed (the message names it and says why).
    """
    source = Path(source)
    if source.is_dir():
        tables = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".txt", ".csv") and p.is_file())
    elif source.is_file():
        tables = [source]
    else:
        raise DataError(f"{source}: no such file or folder")
    index = _audio_index(Path(audio_dir) if audio_dir else None)
    parts = []
    for table in tables:
        try:
            parts.append(_read_table(table, audio_dir, columns or {}, index))
        except DataError as error:
            if not source.is_dir():
                raise
            logger.warning("skipping %s", error)  # a folder may hold other text files
    boxes = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else \
        pd.DataFrame(columns=ANNOTATION_COLUMNS)
    boxes["positive"] = positive
    return boxes[ANNOTATION_COLUMNS]


def _read_table(table: Path, audio_dir, columns: dict[str, str], index: dict[str, Path]) -> pd.DataFrame:
    folders = [Path(audio_dir)] if audio_dir else []
    folders.append(table.parent)
    kind = _annotation_kind(table)
    try:
        if kind == "csv":
            raw = pd.read_csv(table, dtype=str, keep_default_na=False)
            mapping = {}
            for ours, names in _CSV_NAMES.items():
                given = columns.get(ours)
                mapping[ours] = given or next((n for n in names if n in raw.columns), names[0])
            missing = [mapping[k] for k in ("file", "label", "start", "end") if mapping[k] not in raw.columns]
            if missing:
                raise ValueError(f"no column {', '.join(map(repr, missing))} (columns: {', '.join(raw.columns)}); "
                                 "name them file, label, start, end (low_freq, high_freq), or map them")

            def numbers(key: str) -> pd.Series:
                column = mapping.get(key)
                if column not in raw.columns:
                    return pd.Series(np.nan, index=raw.index)
                return pd.to_numeric(raw[column].replace("", np.nan), errors="raise")

            boxes = pd.DataFrame({"file": raw[mapping["file"]].str.strip(), "label": raw[mapping["label"]].str.strip(),
                                  "start": numbers("start"), "end": numbers("end"),
                                  "low_freq": numbers("low_freq"), "high_freq": numbers("high_freq")})
        elif kind == "raven":
            boxes = formats.read_raven(table)
            raw = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
            if "Begin Path" in raw.columns and "Selection" in raw.columns:
                paths = raw.drop_duplicates("Selection")["Begin Path"].reset_index(drop=True)
                boxes["file"] = [p if p and os.path.isfile(p) else f for p, f in zip(paths, boxes["file"])]
        else:
            boxes = formats.read_audacity(table)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{table}: not a readable annotation table ({exc})") from None
    if boxes[["start", "end"]].isna().any().any():
        raise DataError(f"{table}: a box has no begin or end time")
    if (boxes["end"] < boxes["start"]).any():
        bad = boxes[boxes["end"] < boxes["start"]].iloc[0]
        raise DataError(f"{table}: a box ends before it starts ({bad['label']}: {bad['start']} to {bad['end']})")
    own = _recording_of_table(table)
    paths = []
    for name in boxes["file"].fillna("").astype(str):
        found = Path(name) if name and os.path.isabs(name) and os.path.isfile(name) else \
            _audio_for(name or own, folders, index)
        paths.append(str(found.absolute()) if found else "")
    boxes["path"] = paths
    lost = boxes["path"] == ""
    if lost.any():
        names = sorted(set(boxes.loc[lost, "file"].fillna("").replace("", own)))
        logger.warning("%s: no audio file for %d box(es) of %s; left out", table, int(lost.sum()),
                       ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    return boxes[~lost].reset_index(drop=True)


def class_names(table: pd.DataFrame) -> list[str]:
    """The sorted, non-empty labels of a catalog."""
    return sorted(label for label in table["label"].unique() if label)


def check_files(table: pd.DataFrame, check: Callable, error: type[Exception], *, on_error: str = "warn",
                progress: Callable | None = None, workers: int = 4) -> tuple[pd.DataFrame, list, list]:
    """Run ``check`` on every file of a catalog in threads: the usable rows, their checks' results, the errors.

    An ``error`` raised by ``check`` marks a file unusable: logged in one line
    (``on_error = "warn"``), raised (``"raise"``, the first) or kept quiet.
    """
    def checked(path: str):
        try:
            return check(path)
        except error as exc:
            return exc

    paths = table["path"].tolist()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(checked, paths)
        results = list(progress(results, total=len(paths)) if progress else results)
    errors = [r for r in results if isinstance(r, error)]
    if errors and on_error == "raise":
        raise errors[0]
    if on_error == "warn":
        for problem in errors:
            logger.warning("skipping %s", problem)
    ok = np.array([not isinstance(r, error) for r in results], dtype=bool)
    return table[ok].reset_index(drop=True).copy(), [r for r in results if not isinstance(r, error)], errors


def scan(
    table: pd.DataFrame,
    config: AudioConfig | None = None,
    *,
    on_error: str = "warn",
    progress: Callable | None = None,
    workers: int = 4,
) -> tuple[pd.DataFrame, list[AudioError]]:
    """Decode every file of a catalog and keep the usable ones.

    Returns the rows whose files are usable, with ``sample_rate``,
    ``channels`` and ``duration`` columns added, and the errors of the others.

    Parameters
    ----------
    on_error : {"warn", "ignore", "raise"}
        ``"warn"`` logs each error in one line, ``"raise"`` raises the first.
    progress : callable, optional
        Wraps the iterator of results (e.g. ``tqdm`` with ``total=``).
    """
    config = config or AudioConfig()
    usable, infos, errors = check_files(table, lambda path: audio.check(path, config), AudioError,
                                        on_error=on_error, progress=progress, workers=workers)
    usable["sample_rate"] = [i.sample_rate for i in infos]
    usable["channels"] = [i.channels for i in infos]
    usable["duration"] = [i.duration for i in infos]
    return usable, errors


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _counts(series: pd.Series, unit: str) -> str:
    return ", ".join(f"{value}{unit} ({n})" for value, n in series.value_counts().sort_index().items())


def describe(usable: pd.DataFrame, errors: Sequence[AudioError], *, name: str = "") -> tuple[str, str]:
    """A report of a scanned dataset (:func:`scan`): files, classes, durations, formats, unreadable files.

    Returns
    -------
    report : str
        What ``echoengine inspect`` prints: totals, then files, source
        recordings and durations per class, then the unreadable files.
    warning : str
        The classes with a single source recording (they cannot be both
        trained on and held out), or "".

    Examples
    --------
    >>> table = pd.DataFrame({"path": ["a.wav", "b.wav"], "label": ["owl", "owl"], "group": ["a", "b"],
    ...                       "duration": [5.0, 7.0], "sample_rate": [48000, 48000], "channels": [1, 2]})
    >>> print(describe(table, [], name="owls")[0].splitlines()[4])
    total duration: 12.0 s
    """
    lines = [f"dataset: {name}", f"files: {len(usable) + len(errors)} ({len(usable)} usable, {len(errors)} unreadable)"]
    warning = ""
    if len(usable):
        classes = class_names(usable)
        channels = usable["channels"].map(lambda n: {1: "mono", 2: "stereo"}.get(n, f"{n} channels"))
        lines += [f"classes: {len(classes)}" + ("" if classes else " (unlabelled files)"),
                  f"groups (source recordings): {usable['group'].nunique()}",
                  f"total duration: {_minutes(usable['duration'].sum())}",
                  f"sample rates: {_counts(usable['sample_rate'], ' Hz')}", f"channels: {_counts(channels, '')}"]
        table, warning = _per_class(usable)
        lines += ["", *table]
    if errors:
        lines += ["", f"unreadable files ({len(errors)}):", *(f"  {error}" for error in errors)]
    return "\n".join(lines), warning


def _per_class(usable: pd.DataFrame) -> tuple[list[str], str]:
    """Files, source recordings and durations per class; the warning about classes recorded once."""
    per_class = usable.groupby("label").agg(count=("duration", "size"), recordings=("group", "nunique"),
                                            sum=("duration", "sum"), min=("duration", "min"),
                                            max=("duration", "max"))
    width = max([len(str(label)) for label in per_class.index] + [10])
    lines = [f"  {'class':<{width}} {'files':>6} {'recordings':>10} {'duration':>10} {'shortest':>9} {'longest':>9}"]
    for label, row in per_class.iterrows():
        lines.append(f"  {label or '(none)':<{width}} {int(row['count']):>6} {int(row['recordings']):>10} "
                     f"{_minutes(row['sum']):>10} {row['min']:>8.1f}s {row['max']:>8.1f}s")
    single = [str(label) for label, n in per_class["recordings"].items() if label and n < 2]
    warning = ""
    if single:
        warning = (f"{len(single)} class(es) have a single source recording and cannot be both trained on and held "
                   f"out: {', '.join(single[:10])}{' ...' if len(single) > 10 else ''}; they are trained on and "
                   "never tested (add recordings to test them, or leave them out with --sparse-classes drop)")
    return lines, warning
