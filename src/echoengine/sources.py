"""Where a command's audio comes from: datasets, recordings, annotations, and what a model has seen.

Every entry point (the Python API, the command line, the service) reads its
inputs through these functions, so that a labelled dataset, a folder of
field recordings or a set of annotation tables means the same everywhere.

Examples
--------
>>> from echoengine.synthetic import make_dataset  # doctest: +SKIP
>>> table, errors = labelled_files(make_dataset("/tmp/demo-data"), EchoConfig())  # doctest: +SKIP
>>> sorted(table.columns)[:3]  # doctest: +SKIP
['channels', 'duration', 'group']
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from echoengine import audio, catalog, photos
from echoengine.config import EchoConfig
from echoengine.errors import AudioError, EchoError
from echoengine.layout import Bundle, read_splits
from echoengine.taxonomy import Taxonomy, label_table

__all__ = ["annotation_boxes", "audio_files", "find_audio", "labelled_files", "labels_table", "parse_columns",
           "progress_bar", "recordings", "scan", "seen_in_training", "species_names"]


def progress_bar(description: str, unit: str = "file"):
    """A progress wrapper for :func:`echoengine.catalog.scan`: ``tqdm`` on standard error."""
    def wrap(iterable, total):
        return tqdm(iterable, total=total, desc=description, unit=unit, leave=False, file=sys.stderr)
    return wrap


def labelled_files(data: str | Path, config: EchoConfig, *, on_error: str = "warn",
                   progress: bool = False) -> tuple[pd.DataFrame, list[AudioError]]:
    """The usable files of a labelled dataset (folder per class, CSV or ESC-50 folder) and the errors of the rest.

    Each file is decoded once to check it (:func:`scan`). Photos with a
    config of ``data.kind = "images"``; data of the other kind than the
    config's is refused (EchoError). With a taxonomy (``config.taxonomy``),
    the labels are those below its ranks (:func:`echoengine.taxonomy.label_table`).
    """
    table = labels_table(data, config)[0]
    if table.empty:
        photos.refuse_other_kind(config, data)
    return scan(table, config, on_error=on_error, progress=progress_bar("checking") if progress else None)


def scan(table: pd.DataFrame, config: EchoConfig, *, on_error: str = "warn",
         progress=None) -> tuple[pd.DataFrame, list[AudioError]]:
    """Decode every file of a catalog to check it, as the data kind says: recordings
    (:func:`echoengine.catalog.scan`) or photos (:func:`echoengine.photos.scan`)."""
    if config.data.photos:
        return photos.scan(table, config.image, on_error=on_error, progress=progress)
    return catalog.scan(table, config.audio, on_error=on_error, progress=progress)


def labels_table(data: str | Path, config: EchoConfig) -> tuple[pd.DataFrame, Taxonomy | None]:
    """A labelled dataset's catalog (files not checked) and the taxonomy of its labels (None without one)."""
    table = catalog.load_catalog(data, config.data)
    options = config.taxonomy
    if not options.uses_taxonomy:
        return table, None
    root = Path(data) if Path(data).is_dir() else Path(data).parent
    return label_table(table, root, options.lineage_source, ranks=options.ranks, node=options.node)


def find_audio(paths: Sequence[str | Path]) -> list[str]:
    """Audio files under the given files and folders (folders walked recursively, sorted).

    A path given explicitly is kept even when it is not audio, so that the
    run reports it; a missing path is an EchoError.
    """
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(str(p) for p in path.rglob("*") if p.is_file() and audio.is_audio_file(p))
        elif path.exists():
            found.append(str(path))
        else:
            raise EchoError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def audio_files(paths: Sequence[str | Path], extensions: Sequence[str]) -> list[Path]:
    """Files named, and the files with these extensions under folders named (sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        else:
            files.append(path)
    return files


def recordings(data: str | Path, config: EchoConfig, *, progress: bool = False) -> pd.DataFrame:
    """The audio files under ``data`` as unlabelled recordings, checked; a group per ``data.group_regex`` or file."""
    files = [f for f in find_audio([data]) if Path(f).suffix.lower() in config.data.extensions]
    table = pd.DataFrame({"path": [str(Path(f).absolute()) for f in files], "label": "",
                          "group": catalog.group_names([Path(f).name for f in files], config.data.group_regex)})
    usable, _ = catalog.scan(table, config.audio, progress=progress_bar("checking") if progress else None)
    return usable


def parse_columns(text: str | None) -> dict[str, str]:
    """Column names of someone else's annotation tables: ``"file=recording_id,label=species"`` -> a dict.

    Examples
    --------
    >>> parse_columns("file=recording_id, label=species")
    {'file': 'recording_id', 'label': 'species'}
    """
    pairs = [item.split("=", 1) for item in (text or "").split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise EchoError(f"--columns takes ours=theirs pairs, e.g. file=recording_id,label=species; got {text!r}")
    return {ours.strip(): theirs.strip() for ours, theirs in pairs}


def species_names(values: Sequence[str] | None) -> list[str]:
    """Species names from comma-separated lists, or from files of one name per line.

    Examples
    --------
    >>> species_names(["owl, frog", "wren"])
    ['owl', 'frog', 'wren']
    """
    names: list[str] = []
    for value in values or []:
        path = Path(value)
        if path.is_file():
            names += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            names += [name.strip() for name in value.split(",") if name.strip()]
    return names


def annotation_boxes(data: str | Path, annotations: str | Path | None = None, negatives: str | Path | None = None,
                     columns: dict[str, str] | None = None) -> pd.DataFrame:
    """The annotated boxes of the recordings under ``data`` (Raven, Audacity or CSV tables), verified negatives too.

    ``annotations`` defaults to ``data`` itself (tables beside the audio).
    """
    boxes = catalog.read_annotations(annotations or data, columns=columns, audio_dir=data)
    if negatives is not None:
        boxes = pd.concat([boxes, catalog.read_annotations(negatives, positive=False, columns=columns,
                                                           audio_dir=data)], ignore_index=True)
    if not boxes["positive"].any():
        raise EchoError(f"{annotations or data}: no annotated boxes found (Raven tables, Audacity labels or CSVs)")
    return boxes


def seen_in_training(bundles: Sequence[Bundle], table: pd.DataFrame) -> int:
    """How many files of ``table`` trained or selected one of the models (by the bundles' ``splits.csv``)."""
    seen: set[str] = set()
    for member in bundles:
        splits = read_splits(member.path)
        if splits is not None:
            seen |= set(splits.loc[splits["part"].isin(["train", "val"]), "path"])
    return int(table["path"].isin(seen).sum())
