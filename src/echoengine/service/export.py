"""``echoengine reviews export``: a store's reviewed detections as the data ``train`` reads.

The export folder holds::

    OUT/clips/audio/<species>/<key>_<start ms>-<end ms>.wav   confirmed and corrected events (under the species
    OUT/clips/meta/clips.csv                                  they are), and their table: filename, category,
                                                              src_file (the recording: clips of one recording stay
                                                              on one side of a split)
    OUT/recordings/<key>.<ext>                                a copy of every recording with an exported review,
    OUT/recordings/<key>.Table.1.selections.txt               and the Raven table of its confirmed and corrected
                                                              events
    OUT/negatives/<key>.Table.1.selections.txt                rejected events, and the species corrected events
                                                              are not: verified negatives
    OUT/reviews.csv                                           every exported event and its verdict
    OUT/combined.csv                                          with ``--with DATA``: DATA's files and the clips

so that ``echoengine train OUT/clips`` (single-label), ``echoengine train
--multilabel OUT/recordings --negatives OUT/negatives --unlabeled ignore``
(the events nobody reviewed are left out of the loss, not taken as absences)
and ``echoengine train OUT/combined.csv --allow-outside-paths`` (the original
data and the reviews) read it as they are. ``key`` is the first 16 hex digits
of the recording's SHA-256, so names come from content and times, never from
row ids: exporting the same reviews again gives the same files, byte for
byte. Uncertain reviews are not exported; a detection's latest review counts
(:mod:`echoengine.service.reviewed`).

An export never silently replaces a file: exporting into a folder that holds
an earlier export writes what is new, leaves identical files alone, and
refuses (one line, nothing written) when a file would change or an earlier
file is no longer exported, unless ``overwrite`` is given. Each file is
written whole (:func:`echoengine.files.write_atomic`).

Examples
--------
>>> result = export_reviews("echo-store", "reviews-2024")  # doctest: +SKIP
>>> print(result.text())  # doctest: +SKIP
exported 120 reviewed detections of 14 recordings (96 confirmed, 9 corrected, 15 rejected) to reviews-2024: ...
>>> species_folder("Strix aluco"), species_folder("owl")
('Strix_aluco-8740d4', 'owl')
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf

from echoengine import formats
from echoengine.catalog import load_catalog
from echoengine.config import DataConfig
from echoengine.errors import EchoError
from echoengine.files import TEMPORARY_SUFFIX, write_atomic
from echoengine.service.reviewed import COLUMNS, REVIEWS_FILE, read_store
from echoengine.service.store import AudioStore

__all__ = ["ExportResult", "export_reviews", "species_folder"]

CLIPS, RECORDINGS, NEGATIVES = "clips", "recordings", "negatives"
CLIPS_TABLE, COMBINED = "clips/meta/clips.csv", "combined.csv"
_TABLE = ".Table.1.selections.txt"
# the names an export gives its files, below the folders it writes (no other file there is ever touched)
_EXPORTED = re.compile(r"^(clips/audio/[^/]+/[0-9a-f]{16}_\d{9}-\d{9}\.wav|(recordings|negatives)/[0-9a-f]{16}"
                       r"(\.Table\.1\.selections\.txt|\.[a-z0-9]{1,5}))$")


def species_folder(species: str) -> str:
    """A folder name for a species: the name itself when it is a safe one, else a safe form with a short hash."""
    safe = re.sub(r"[^\w.-]+", "_", species).strip("._") or "species"
    if safe == species:
        return safe
    return f"{safe}-{hashlib.blake2b(species.encode(), digest_size=3).hexdigest()}"


def _clip_name(key: str, start: float, end: float) -> str:
    return f"{key}_{round(start * 1000):09d}-{round(end * 1000):09d}.wav"


@dataclass
class _File:
    """A file of the export: made from bytes, or linked from a file of the store whose SHA-256 is known."""

    relative: str
    make: Callable[[], bytes] | None = None
    source: Path | None = None
    sha256: str | None = None


@dataclass
class ExportResult:
    """What an export wrote: its events (``reviews.csv``'s rows) and the files it wrote, kept and removed."""

    out: Path
    events: pd.DataFrame
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One paragraph: what was exported, and the commands that train on it."""
        counts = self.events["verdict"].value_counts()
        what = ", ".join(f"{counts.get(v, 0)} {v}" for v in ("confirmed", "corrected", "rejected"))
        out = self.out
        lines = [f"exported {len(self.events)} reviewed detections of {self.events['recording'].nunique()} "
                 f"recordings ({what}) to {out}: {len(self.written)} files written, {len(self.unchanged)} unchanged"
                 + (f", {len(self.removed)} of an earlier export removed" if self.removed else ""),
                 f"  single-label: echoengine train {out / CLIPS} --out NEW-BUNDLE",
                 f"  multi-label:  echoengine train --multilabel {out / RECORDINGS} --negatives {out / NEGATIVES} "
                 "--unlabeled ignore --out NEW-BUNDLE"]
        if (out / COMBINED).is_file():
            lines.append(f"  with the original data: echoengine train {out / COMBINED} --allow-outside-paths "
                         "--out NEW-BUNDLE")
        return "\n".join(lines)


def export_reviews(store: str | Path, out: str | Path, *, db: str | None = None, since: str | None = None,
                   until: str | None = None, with_data: str | Path | None = None, group_regex: str = "",
                   overwrite: bool = False) -> ExportResult:
    """Write a store's reviewed detections into ``out`` as labelled clips, recordings, Raven tables and negatives.

    Parameters
    ----------
    store, db : path, str
        The store folder of ``echoengine serve`` and its database URL (default: SQLite in the store).
    out : path
        The export folder (made if missing).
    since, until : str, optional
        Only detections from / up to these times (ISO 8601).
    with_data : path, optional
        A labelled dataset (any DATA of ``train``): ``out/combined.csv`` lists its files and the exported clips.
    group_regex : str
        How ``with_data``'s file names name their source recording (``train --group-regex``): each
        file's group goes into ``combined.csv`` as its ``src_file``, so that splits keep a recording's clips together.
    overwrite : bool
        Replace files of an earlier export that differ, and remove those this export no longer has.

    Raises
    ------
    EchoError
        Not a store; no reviewed detection to export; an ``out`` that holds
        files but no export; or (without ``overwrite``) files of an earlier
        export in ``out`` that this one would change or leave stale. Files
        in ``out`` not named as an export names its files are never touched.
    """
    out = Path(out)
    _check_folder(out)
    events = read_store(store, db, since=since, until=until)
    if events.empty:
        raise EchoError(f"--store {store}: no detection has a latest review of confirmed or rejected"
                        + (" in that time range" if since or until else "") + "; nothing to export")
    audio = AudioStore(store)  # read_store has checked that it is a store
    events["clip"] = [f"{CLIPS}/audio/{species_folder(label)}/{_clip_name(key, start, end)}" if label else ""
                      for key, start, end, label in zip(events["key"], events["start"], events["end"],
                                                        events["label"], strict=True)]
    events["recording_file"] = [f"{RECORDINGS}/{key}{Path(name).suffix}"
                                for key, name in zip(events["key"], events["audio"], strict=True)]
    plan = _plan(events, audio, out, with_data, group_regex)
    result = ExportResult(out, events[[*COLUMNS, "recording_file", "clip"]])
    changed, stale = _compare(plan, out, result)
    if (changed or stale) and not overwrite:
        first = (changed or stale)[0]
        raise EchoError(f"{out}: {len(changed)} file(s) of an earlier export would change and {len(stale)} are no "
                        f"longer exported (first: {first}); export into a new folder, or pass --overwrite to "
                        "replace and remove them")
    for entry in plan:
        if entry.relative not in result.unchanged:
            _write(out, entry)
            result.written.append(entry.relative)
    for relative in stale:
        (out / relative).unlink()
        result.removed.append(relative)
    return result


def _plan(events: pd.DataFrame, audio: AudioStore, out: Path, with_data: str | Path | None,
          group_regex: str = "") -> list[_File]:
    """Every file of the export, the tables last (``reviews.csv`` last of all: it marks a whole export)."""
    plan: list[_File] = []
    clips = events[events["clip"] != ""].drop_duplicates("clip")
    for row in clips.itertuples(index=False):
        plan.append(_File(row.clip, make=lambda r=row: _clip_bytes(audio, r.audio, r.start, r.end)))
    for (key, recording), rows in events.groupby(["key", "recording"], sort=True):
        first = rows.iloc[0]
        plan.append(_File(first["recording_file"], source=Path(first["path"]), sha256=recording))
        positives, negatives = _boxes(rows)
        for folder, boxes in ((RECORDINGS, positives), (NEGATIVES, negatives)):
            if len(boxes):
                plan.append(_File(f"{folder}/{key}{_TABLE}", make=lambda b=boxes: _raven_bytes(b)))
    table = pd.DataFrame({"filename": clips["clip"].str.removeprefix(f"{CLIPS}/audio/"), "category": clips["label"],
                          "src_file": clips["key"]}).sort_values(["filename", "category"], ignore_index=True)
    plan.append(_File(CLIPS_TABLE, make=lambda: _csv_bytes(table)))
    if with_data is not None:
        combined = _combined(with_data, table, out, group_regex)
        plan.append(_File(COMBINED, make=lambda: _csv_bytes(combined)))
    reviews = events[[*COLUMNS, "recording_file", "clip"]]
    plan.append(_File(REVIEWS_FILE, make=lambda: _csv_bytes(reviews)))
    return plan


def _boxes(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A recording's positive boxes (confirmed, corrected: the species the event is) and its verified negatives
    (rejected, corrected: the species detected), each once, in time order; no negative where a positive is."""
    labelled = rows[rows["verdict"] != "rejected"]
    positives = pd.DataFrame({"start": labelled["start"], "end": labelled["end"], "label": labelled["label"],
                              "score": labelled["score"].where(labelled["verdict"] == "confirmed")})
    wrong = rows[rows["verdict"] != "confirmed"]
    negatives = pd.DataFrame({"start": wrong["start"], "end": wrong["end"], "label": wrong["species"],
                              "score": wrong["score"]})
    keys = ["start", "end", "label"]
    positives = positives.sort_values([*keys, "score"], ignore_index=True).drop_duplicates(keys, ignore_index=True)
    negatives = negatives.sort_values([*keys, "score"], ignore_index=True).drop_duplicates(keys, ignore_index=True)
    known = set(positives[keys].itertuples(index=False, name=None))
    negatives = negatives[[box not in known for box in negatives[keys].itertuples(index=False, name=None)]]
    return positives, negatives.reset_index(drop=True)


def _combined(data: str | Path, clips: pd.DataFrame, out: Path, group_regex: str = "") -> pd.DataFrame:
    """DATA's labelled files and the exported clips, as an ESC-50-style table of absolute paths."""
    original = load_catalog(data, DataConfig(group_regex=group_regex))
    original = original[original["label"] != ""]
    if original.empty:
        raise EchoError(f"--with {data}: no labelled files there")
    folder = (out / CLIPS / "audio").absolute()
    exported = pd.DataFrame({"filename": [str(folder / name) for name in clips["filename"]],
                             "category": clips["category"], "src_file": clips["src_file"]})
    return pd.concat([pd.DataFrame({"filename": original["path"], "category": original["label"],
                                    "src_file": original["group"]}), exported], ignore_index=True)


def _clip_bytes(audio: AudioStore, name: str, start: float, end: float) -> bytes:
    """An event's audio as 16-bit WAV at its recording's rate (the same bytes every time)."""
    samples, rate = audio.clip(name, start=start, end=end)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _raven_bytes(boxes: pd.DataFrame) -> bytes:
    text = io.StringIO()
    formats.write_raven(boxes, text)
    return text.getvalue().encode("utf-8")


def _csv_bytes(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _same(out: Path, entry: _File) -> bool:
    """Whether the file already in ``out`` is the one this export would write."""
    path = out / entry.relative
    if entry.sha256 is not None:
        return _sha256(path) == entry.sha256
    return path.read_bytes() == entry.make()


def _compare(plan: list[_File], out: Path, result: ExportResult) -> tuple[list[str], list[str]]:
    """The planned files already there and different, and the earlier export's files this one lacks; those
    already there and identical go to ``result.unchanged``. Leftovers of a killed export are removed."""
    changed = []
    for entry in plan:
        if (out / entry.relative).is_file():
            if _same(out, entry):
                result.unchanged.append(entry.relative)
            else:
                changed.append(entry.relative)
    planned = {entry.relative for entry in plan}
    found = [COMBINED, CLIPS_TABLE, REVIEWS_FILE]
    for folder in ("clips/audio", RECORDINGS, NEGATIVES):
        if (out / folder).is_dir():
            found += sorted(p.relative_to(out).as_posix() for p in (out / folder).rglob("*") if p.is_file())
    for relative in found:  # leftovers of a killed export
        if relative.endswith(TEMPORARY_SUFFIX) and _EXPORTED.match(relative.removesuffix(TEMPORARY_SUFFIX)):
            (out / relative).unlink()
    stale = [r for r in found if r not in planned and (out / r).is_file()
             and (_EXPORTED.match(r) or r in (COMBINED, CLIPS_TABLE, REVIEWS_FILE))]
    return changed, stale


def _check_folder(out: Path) -> None:
    """Refuse a folder that holds files but no export: an export writes into a new or empty folder, or its own."""
    if out.exists() and not out.is_dir():
        raise EchoError(f"--out {out}: not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / REVIEWS_FILE).is_file():
        raise EchoError(f"--out {out}: holds files but no {REVIEWS_FILE}, so it is not a review export; export "
                        "into a new or empty folder, or into an earlier export")


def _write(out: Path, entry: _File) -> None:
    path = out / entry.relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry.source is None:
        data = entry.make()
        write_atomic(path, lambda temporary: temporary.write_bytes(data))
        return
    if not entry.source.is_file():
        raise EchoError(f"{entry.source}: a reviewed recording is missing from the store")
    write_atomic(path, lambda temporary: shutil.copyfile(entry.source, temporary))  # a copy: edits stay out
