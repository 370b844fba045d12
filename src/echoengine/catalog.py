"""Datasets as tables of samples, checks of their files, and leak-free splits.

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
>>> import pandas as pd
>>> table = pd.DataFrame({"path": [f"{i}.wav" for i in range(8)],
...                       "label": ["a", "b"] * 4, "group": ["g0", "g1", "g2", "g3"] * 2})
>>> kfold(table, folds=2, seed=0).tolist()
[1, 0, 0, 1, 1, 0, 0, 1]
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from echoengine import audio, formats
from echoengine.config import AUDIO_EXTENSIONS, AudioConfig, DataConfig
from echoengine.errors import AudioError, DataError

__all__ = [
    "EXCLUDED",
    "TRAIN_ONLY",
    "class_names",
    "from_csv",
    "from_folder",
    "group_names",
    "kfold",
    "load_catalog",
    "scan",
    "split",
]

COLUMNS = ["path", "label", "group"]
#: The fold of a row left out of cross-validation (``data.sparse_classes = "drop"``).
EXCLUDED = -1
#: The fold of a row trained on in every fold and never tested (``data.sparse_classes = "train"``).
TRAIN_ONLY = -2
logger = logging.getLogger("echoengine")


def _group_of(name: str, pattern: re.Pattern | None) -> str:
    if pattern is None:
        return os.path.splitext(name)[0]
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
    if source.is_file() and audio.is_audio_file(source):
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


def split_groups(table: pd.DataFrame, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0) -> np.ndarray:
    """Assign rows to ``"train"``, ``"val"`` and ``"test"`` by group only (multi-label recordings).

    Whole groups (source recordings) move together; fractions are of groups.

    Examples
    --------
    >>> table = pd.DataFrame({"group": [f"g{i}" for i in range(10)]})
    >>> sorted(pd.Series(split_groups(table, val_fraction=0.2, test_fraction=0.2)).value_counts().items())
    [('test', 2), ('train', 6), ('val', 2)]
    """
    groups = np.array(sorted(table["group"].unique()))
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test, n_val = round(test_fraction * len(groups)), round(val_fraction * len(groups))
    spare = len(groups) - 1  # one group trains, whatever the fractions
    n_test = min(max(n_test, int(test_fraction > 0)), spare)
    n_val = min(max(n_val, int(val_fraction > 0)), spare - n_test)
    part_of = {}
    for position, index in enumerate(order):
        part_of[groups[index]] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return table["group"].map(part_of).to_numpy()


def class_names(table: pd.DataFrame) -> list[str]:
    """The sorted, non-empty labels of a catalog."""
    return sorted(label for label in table["label"].unique() if label)


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
    paths = table["path"].tolist()

    def check(path: str) -> audio.AudioInfo | AudioError:
        try:
            return audio.check(path, config)
        except AudioError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, paths)
        results = list(progress(results, total=len(paths)) if progress else results)
    errors = [r for r in results if isinstance(r, AudioError)]
    if errors and on_error == "raise":
        raise errors[0]
    if on_error == "warn":
        for error in errors:
            logger.warning("skipping %s", error)
    ok = np.array([not isinstance(r, AudioError) for r in results], dtype=bool)
    usable = table[ok].reset_index(drop=True).copy()
    infos = [r for r in results if not isinstance(r, AudioError)]
    usable["sample_rate"] = [i.sample_rate for i in infos]
    usable["channels"] = [i.channels for i in infos]
    usable["duration"] = [i.duration for i in infos]
    return usable, errors


def _classes_to_hold_out(table: pd.DataFrame, parts: int, purpose: str, sparse_classes: str,
                         fix: str = "") -> np.ndarray:
    """Check that every class can sit on both sides of a split; the rows that can.

    A class needs two source recordings to be both trained on and held out;
    with one, its rows are trained on only (``sparse_classes="train"``), left
    out (``"drop"``), or an error. A class with fewer recordings than
    ``parts`` is kept, with a warning that it misses some parts, ending in
    ``fix`` (``{fewest}``: the fewest recordings of such a class).
    """
    if table.empty:
        raise DataError(f"no samples to split for {purpose}")
    unlabelled = int((table["label"] == "").sum())
    if unlabelled:
        raise DataError(f"{unlabelled} sample(s) have no label; {purpose} needs a label for every sample")
    counts = table.groupby("label")["group"].nunique()
    single = counts[counts < 2]
    if len(single) and sparse_classes == "error":
        listing = ", ".join(f"{label!r}" for label in single.index)
        raise DataError(
            f"{purpose} needs at least 2 source recordings per class, to train on one and hold out another; "
            f"only 1 in: {listing}. Add recordings, train on them without testing them with data.sparse_classes = "
            "'train' (--sparse-classes train), or leave them out with --sparse-classes drop"
        )
    if len(single):
        what = "trained on but never tested" if sparse_classes == "train" else "left out"
        logger.warning("%s: %s (a single source recording): %s", purpose, what, ", ".join(single.index))
    few = counts[(counts >= 2) & (counts < parts)]
    if len(few):
        listing = ", ".join(f"{label} ({n})" for label, n in few.items())
        logger.warning("%s: fewer source recordings than %d parts, so missing from some: %s%s", purpose, parts, listing,
                       f"; {fix.format(fewest=few.min())}" if fix else "")
    return ~table["label"].isin(single.index).to_numpy()


def _stratified_group_parts(table: pd.DataFrame, parts: int, seed: int) -> np.ndarray:
    """Assign each row to one of ``parts`` folds, stratified by label and grouped by group."""
    n_groups = table["group"].nunique()
    if n_groups < parts:
        raise DataError(f"cannot make {parts} parts from {n_groups} source recording(s): add data or ask for fewer")
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    fold = np.empty(len(table), dtype=np.int64)
    with warnings.catch_warnings():  # "least populated class has only n members": reported above
        warnings.simplefilter("ignore", UserWarning)
        for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(table)), table["label"], table["group"])):
            fold[held_out] = index
    return fold


def kfold(table: pd.DataFrame, *, folds: int, seed: int = 0, sparse_classes: str = "train") -> np.ndarray:
    """The fold (0 .. folds-1) of each row, stratified by label, grouped by source recording.

    The rows of a class with a single source recording get :data:`TRAIN_ONLY`
    (``sparse_classes="train"``: in the training part of every fold, never
    tested) or :data:`EXCLUDED` (``"drop"``: left out). A class
    with fewer source recordings than ``folds`` is kept, with a warning
    naming it and its recordings: it is missing from some folds.

    Raises
    ------
    DataError
        A class has a single source recording (and ``sparse_classes`` is
        ``"error"``), a sample has no label, or every class has fewer files
        than ``folds`` (folds cannot be stratified then; the message names
        the classes and the most folds possible).
    """
    purpose = f"{folds}-fold cross-validation"
    fix = "use fewer folds (--folds {fewest}, data.folds) for every class to be in every fold"
    keep = _classes_to_hold_out(table, folds, purpose, sparse_classes, fix)
    kept = table[keep]
    files, n_groups = kept.groupby("label").size(), kept["group"].nunique()
    if n_groups >= folds and (files < folds).all():  # StratifiedGroupKFold needs a class with a file per fold
        recordings = kept.groupby("label")["group"].nunique()
        listing = ", ".join(f"{label} ({recordings[label]} recordings, {n} files)" for label, n in files[:8].items())
        more = f" and {len(files) - 8} more" if len(files) > 8 else ""
        most = min(int(files.max()), n_groups)
        raise DataError(f"{purpose} needs a class with at least {folds} files to stratify the folds, but every class "
                        f"has fewer: {listing}{more}; use --folds {most} or fewer (data.folds), or add recordings")
    fold = np.full(len(table), TRAIN_ONLY if sparse_classes == "train" else EXCLUDED, dtype=np.int64)
    fold[keep] = _stratified_group_parts(kept, folds, seed)
    return fold


def split(
    table: pd.DataFrame,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    sparse_classes: str = "train",
) -> np.ndarray:
    """Assign each row to ``"train"``, ``"val"`` or ``"test"`` (``"excluded"``: left out).

    A class recorded once goes to ``"train"`` (``sparse_classes="train"``) or ``"excluded"`` (``"drop"``).

    Grouped by source recording and stratified by label: each class sends
    about its fractions of its recordings (drawn with the seed) to test and
    validation, and at least one recording to each when it has enough, so
    every class with 3 or more recordings is in all three parts. File
    fractions are met approximately, as whole recordings move together.

    Returns
    -------
    np.ndarray of str, shape (rows,)
    """
    parts = 1 + (val_fraction > 0) + (test_fraction > 0)
    keep = _classes_to_hold_out(table, parts, "a train/validation/test split", sparse_classes)
    kept = table[keep]
    # Each recording goes where its (majority) class sends it. A class sends its
    # share of recordings to test and to validation, and at least one to test
    # (from 2 recordings) and to validation (from 3), keeping one for training.
    majority = kept.groupby("group")["label"].agg(lambda labels: labels.value_counts().index[0])
    rng = np.random.default_rng(seed)
    part_of: dict[str, str] = {}
    for _, groups in sorted(majority.groupby(majority), key=lambda item: item[0]):
        recordings = sorted(groups.index)
        rng.shuffle(recordings)
        n = len(recordings)
        n_test = max(round(n * test_fraction), int(test_fraction > 0 and n >= 2))
        n_val = max(round(n * val_fraction), int(val_fraction > 0 and n >= 3))
        n_test, n_val = min(n_test, n - 1), min(n_val, max(n - 1 - n_test, 0))
        for i, group in enumerate(recordings):
            part_of[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    names = np.full(len(table), "train" if sparse_classes == "train" else "excluded", dtype=object)
    names[keep] = kept["group"].map(part_of).to_numpy()
    return names
