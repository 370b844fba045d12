"""Reviewed detections as one table, read from a store or from a review export; what a bundle trained on.

A detection's verdict is its **latest** review (several reviewers may review
it; the last word counts). ``uncertain`` is not a verdict and is left out.
The verdicts:

``confirmed``
    ``confirmed`` with no species, or with the detection's own: the event is its species.
``corrected``
    A review (``confirmed`` or ``rejected``) naming another species: the
    event is that species, and not the detected one.
``rejected``
    ``rejected`` with no other species: the event is not its species (what it
    is, is not known).

Each row is an event: ``detection_id, recording`` (the SHA-256 of its
recording), ``key`` (its first :data:`KEY_LENGTH` hex digits, which name the
exported files), ``path`` (the recording's audio), ``sensor_id, time, start,
end, species`` (detected), ``score, model, verdict, label`` (the species it
is; empty when rejected), ``reviewer, reviewed_at``. Rows are sorted by
recording, times, species and id, never by the database's order.

Examples
--------
>>> verdict_of("confirmed", None, "owl"), verdict_of("rejected", "wren", "owl"), verdict_of("rejected", None, "owl")
(('confirmed', 'owl'), ('corrected', 'wren'), ('rejected', ''))
>>> table = pd.DataFrame({"species": ["owl", "owl", "wren"], "verdict": ["confirmed", "rejected", "corrected"],
...                       "label": ["owl", "", "owl"]})
>>> truth(table, "owl").tolist(), truth(table, "wren").tolist()
([1.0, 0.0, 1.0], [0.0, nan, 0.0])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import func, select

from echoengine.errors import EchoError
from echoengine.layout import find_bundles, read_splits
from echoengine.service.db import DB_FILE, Database, default_url
from echoengine.service.ingest import parse_time
from echoengine.service.schema import Detection, Model, Recording, Review
from echoengine.service.store import AudioStore
from echoengine.service.views import iso

__all__ = ["COLUMNS", "KEY_LENGTH", "REVIEWS_FILE", "exported_keys", "held_out", "open_store", "read_export",
           "read_store", "reviewed_events", "trained_keys", "truth", "verdict_of"]

#: Hex digits of a recording's SHA-256 that name its exported files (64 bits: no two recordings of a store share it).
KEY_LENGTH = 16
#: The table of an export's reviewed events (its presence makes a folder an export).
REVIEWS_FILE = "reviews.csv"
COLUMNS = ["detection_id", "recording", "key", "sensor_id", "time", "start", "end", "species", "score", "model",
           "verdict", "label", "reviewer", "reviewed_at", "audio"]
_KEY = re.compile(rf"^([0-9a-f]{{{KEY_LENGTH}}})(?:_|$)")
_ORDER = ["recording", "start", "end", "species", "detection_id"]


def verdict_of(status: str, species: str | None, detected: str) -> tuple[str, str]:
    """The verdict (confirmed, corrected, rejected) of a latest review and the species the event is ('' unknown)."""
    if species and species != detected:
        return "corrected", species
    return ("confirmed", detected) if status == "confirmed" else ("rejected", "")


def truth(table: pd.DataFrame, species: str) -> np.ndarray:
    """Whether each event is ``species``: 1, 0, or NaN when its review does not say.

    An event is its label (one species per event); a rejected event is not
    its detected species, and says nothing of the others.
    """
    labelled = table["verdict"].isin(["confirmed", "corrected"]).to_numpy()
    label = table["label"].to_numpy() == species
    rejected_here = (table["verdict"].to_numpy() == "rejected") & (table["species"].to_numpy() == species)
    return np.where(labelled, label.astype(float), np.where(rejected_here, 0.0, np.nan))


def open_store(store: str | Path, db: str | None = None) -> tuple[Database, AudioStore]:
    """A store's database and audio, for reading (nothing is migrated or created).

    Raises
    ------
    EchoError
        Not a store of ``echoengine serve`` (no ``audio/`` folder, or no ``echo.db`` without ``db``).
    """
    store = Path(store)
    if not store.exists():
        raise EchoError(f"{store}: no such folder (a store of echoengine serve, or a review export)")
    if not (store / "audio").is_dir():
        raise EchoError(f"{store}: not the store folder of echoengine serve (it has no audio/ folder)")
    if db is None and not (store / DB_FILE).is_file():
        raise EchoError(f"{store}: has no {DB_FILE}, so it is neither the store of echoengine serve (whose "
                        f"database --db URL gives, when it is elsewhere) nor a review export (no {REVIEWS_FILE})")
    return Database.connect(db or default_url(store)), AudioStore(store)


def _latest_reviews():
    return select(Review.detection_id, func.max(Review.id).label("review_id")).group_by(Review.detection_id).subquery()


def read_store(store: str | Path, db: str | None = None, *, since: str | None = None,
               until: str | None = None) -> pd.DataFrame:
    """The reviewed events of a store (see the module's text), detections from ``since`` to ``until`` only.

    Raises
    ------
    EchoError
        Not a store, or a time that is not ISO 8601.
    """
    start, end = parse_time(since, "--since"), parse_time(until, "--until")
    database, audio = open_store(store, db)
    latest = _latest_reviews()
    query = (select(Detection.id, Recording.sha256, Recording.audio, Recording.sensor_id, Detection.time,
                    Detection.start, Detection.end, Detection.species, Detection.score, Model.name, Model.version,
                    Review.status, Review.species, Review.reviewer, Review.created_at)
             .join(Recording, Recording.id == Detection.recording_id).join(Model, Model.id == Detection.model_id)
             .join(latest, latest.c.detection_id == Detection.id).join(Review, Review.id == latest.c.review_id)
             .where(Review.status.in_(("confirmed", "rejected"))))
    if start is not None:
        query = query.where(Detection.time >= start)
    if end is not None:
        query = query.where(Detection.time <= end)
    try:
        with database.session() as session:
            rows = session.execute(query).all()
    finally:
        database.dispose()
    events = [_event(row, audio) for row in rows]
    return _sorted(pd.DataFrame(events, columns=[*COLUMNS, "path"]))


def _event(row, audio: AudioStore) -> dict:
    (detection_id, sha256, name, sensor, time, start, end, species, score, model, version, status, corrected,
     reviewer, reviewed_at) = row
    verdict, label = verdict_of(status, corrected, species)
    return {"detection_id": detection_id, "recording": sha256, "key": sha256[:KEY_LENGTH], "sensor_id": sensor or "",
            "time": iso(time), "start": round(float(start), 3), "end": round(float(end), 3), "species": species,
            "score": round(float(score), 4), "model": f"{model}/{version}", "verdict": verdict, "label": label,
            "reviewer": reviewer, "reviewed_at": iso(reviewed_at), "audio": name, "path": str(audio.path(name))}


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(_ORDER, kind="stable", ignore_index=True)


def read_export(folder: str | Path) -> pd.DataFrame:
    """The reviewed events of an export (its ``reviews.csv``), ``path`` the exported copy of each recording.

    Raises
    ------
    EchoError
        No ``reviews.csv``, or one that is not an export's.
    """
    folder = Path(folder)
    path = folder / REVIEWS_FILE
    if not path.is_file():
        raise EchoError(f"{folder}: not a review export (no {REVIEWS_FILE}; write one with echoengine reviews export)")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in [*COLUMNS, "recording_file"] if c not in table.columns]
        if missing:
            raise ValueError(f"no column {', '.join(missing)}")
        for column in ("start", "end", "score"):
            table[column] = table[column].astype(float)
        table["detection_id"] = table["detection_id"].astype(int)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise EchoError(f"{path}: not the reviews.csv of an export ({' '.join(str(exc).split())[:200]})") from None
    table["path"] = [str((folder / name).absolute()) for name in table["recording_file"]]
    return _sorted(table)


def reviewed_events(source: str | Path, db: str | None = None, *, since: str | None = None,
                    until: str | None = None) -> pd.DataFrame:
    """The reviewed events of a store, or of an export (a folder holding ``reviews.csv``)."""
    if (Path(source) / REVIEWS_FILE).is_file():
        if db or since or until:
            raise EchoError(f"{source} is a review export: --db, --since and --until choose what a store gives")
        return read_export(source)
    return read_store(source, db, since=since, until=until)


def key_of(name: str) -> str | None:
    """The recording key an exported file's name starts with (``<key>_<start>-<end>.wav``, ``<key>.flac``)."""
    match = _KEY.match(Path(name).stem)
    return match.group(1) if match else None


def trained_keys(bundles: Sequence[str | Path]) -> set[str]:
    """The recordings (keys) whose exported clips or copies trained or selected one of the bundles (their
    ``splits.csv``, train and val parts; each fold's of a CV folder)."""
    keys: set[str] = set()
    for bundle in bundles:
        for member in find_bundles(bundle):
            splits = read_splits(member)
            if splits is not None:
                used = splits.loc[splits["part"].isin(["train", "val"]), "path"]
                keys |= {key for key in map(key_of, used) if key}
    return keys


def exported_keys(exports: Sequence[str | Path]) -> set[str]:
    """The recordings (keys) of review exports."""
    keys: set[str] = set()
    for export in exports:
        keys |= set(read_export(export)["key"])
    return keys


def held_out(events: pd.DataFrame, *, bundles: Sequence[str | Path] = (),
             exclude: Sequence[str | Path] = ()) -> tuple[pd.DataFrame, int]:
    """The events of recordings none of ``bundles`` trained on and no export of ``exclude`` holds; how many were
    left out. Whole recordings are left out: their events are not independent of those trained on."""
    keys = trained_keys(bundles) | exported_keys(exclude)
    kept = ~events["key"].isin(keys)
    return events[kept].reset_index(drop=True), int((~kept).sum())
