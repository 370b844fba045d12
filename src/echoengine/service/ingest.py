"""Recordings into the queue: the one way audio enters the service (HTTP uploads and the MQTT bridge).

:func:`ingest` takes the audio's bytes (:func:`ingest_stream`, a file
object read in blocks) and the recording's metadata, stores the file by its
content hash, checks that it decodes, and adds a ``queued`` row in one
transaction. The same content again returns the first upload's id
(``created`` False) and changes nothing. Bad input raises
:class:`IngestError`, whose ``status`` is the HTTP status it answers to
(400 bad metadata or file name, 415 not decodable audio) and whose message
is one line.

Examples
--------
>>> import io, tempfile, numpy as np, soundfile as sf
>>> from echoengine.service.db import Database
>>> db, store = Database.connect("sqlite://"), AudioStore(tempfile.mkdtemp())
>>> _ = db.migrate()
>>> wav = io.BytesIO()
>>> sf.write(wav, np.zeros(8000, "float32"), 16000, format="WAV")
>>> ingest(db, store, wav.getvalue(), filename="pond.wav", sensor_id="pond-1", lat=51.5, lon=-0.1)
(1, True)
>>> ingest(db, store, wav.getvalue(), filename="again.wav")
(1, False)
>>> ingest(db, store, b"not audio", filename="notes.wav")
Traceback (most recent call last):
...
echoengine.service.ingest.IngestError: notes.wav: not a readable audio file (...)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from typing import BinaryIO

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from echoengine.errors import AudioError, EchoError
from echoengine.service.db import Database
from echoengine.service.schema import Recording, Sensor, utc_now
from echoengine.service.store import AudioStore, audio_extension

__all__ = ["IngestError", "check_filename", "ingest", "ingest_stream", "parse_time"]

_BLOCK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 255
_YEARS = (1900, 2200)
_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0), "alt": (-12000.0, 100000.0)}


class IngestError(EchoError):
    """A recording that cannot be queued; ``status`` is the HTTP status that says why (400 or 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_filename(filename: str | None) -> str:
    """A client's file name, refused when it tries to be a path (it only ever gives the extension).

    Examples
    --------
    >>> check_filename("dawn chorus.wav")
    'dawn chorus.wav'
    >>> check_filename("../../etc/passwd.wav")
    Traceback (most recent call last):
    ...
    echoengine.service.ingest.IngestError: file name '../../etc/passwd.wav': give a plain file name, not a path
    """
    name = filename or ""
    if len(name) > _MAX_NAME:
        raise IngestError(f"file name {name[:60]!r}...: too long ({len(name)} characters, at most {_MAX_NAME})")
    if "/" in name or "\\" in name or name in (".", "..") or _CONTROL.search(name):
        raise IngestError(f"file name {name[:100]!r}: give a plain file name, not a path")
    return name


def parse_time(value: str | float | dt.datetime | None, what: str = "recorded_at") -> dt.datetime | None:
    """An ISO 8601 time, a Unix time in seconds, or a datetime, as naive UTC (no zone given: UTC).

    Examples
    --------
    >>> parse_time("2024-05-01T06:30:00+02:00")
    datetime.datetime(2024, 5, 1, 4, 30)
    >>> parse_time(1714545000)
    datetime.datetime(2024, 5, 1, 6, 30)
    >>> parse_time("yesterday")
    Traceback (most recent call last):
    ...
    echoengine.service.ingest.IngestError: recorded_at: 'yesterday' is not an ISO 8601 time (e.g. 2024-05-01T06:30:00Z)
    """
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = dt.datetime.fromtimestamp(value, dt.UTC)
        except (ValueError, OverflowError, OSError):
            raise IngestError(f"{what}: {value!r} is not a Unix time in seconds") from None
    elif not isinstance(value, dt.datetime):
        try:
            value = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise IngestError(f"{what}: {str(value)[:60]!r} is not an ISO 8601 time (e.g. 2024-05-01T06:30:00Z)") \
                from None
    shown = value.isoformat()
    try:
        value = value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    except OverflowError:  # year 1 or 9999 moved past the calendar's end by its offset
        value = None
    if value is None or not _YEARS[0] <= value.year <= _YEARS[1]:
        raise IngestError(f"{what}: {shown} is not a time a recording was made (years {_YEARS[0]} to {_YEARS[1]})")
    return value


def _metadata(sensor_id: str | None, recorded_at: str | float | dt.datetime | None, lat: float | None,
              lon: float | None, alt: float | None) -> tuple[str | None, dt.datetime | None, dict[str, float | None]]:
    """The recording's metadata, checked: sensor id, start time (naive UTC) and position."""
    position = {"lat": lat, "lon": lon, "alt": alt}
    if sensor_id is not None and not (0 < len(sensor_id) <= 128 and not _CONTROL.search(sensor_id)):
        raise IngestError(f"sensor_id {sensor_id[:60]!r}: 1 to 128 characters, no control characters")
    for key, value in position.items():
        low, high = _RANGES[key]
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise IngestError(f"{key}: {value} is outside [{low:g}, {high:g}]")
    return sensor_id, parse_time(recorded_at), position


def ingest(db: Database, store: AudioStore, data: bytes, *, filename: str | None = None,
           sensor_id: str | None = None, recorded_at: str | float | dt.datetime | None = None,
           lat: float | None = None, lon: float | None = None, alt: float | None = None) -> tuple[int, bool]:
    """Queue a recording given as bytes; its id, and whether it is new (False: this content was queued before).

    Parameters
    ----------
    db, store : Database, AudioStore
        Where the row and the file go.
    data : bytes
        The whole audio file (any format of :data:`~echoengine.config.AUDIO_EXTENSIONS`).
    filename : str, optional
        The client's name for it: only its extension is used (else the
        format is read from the content); a path is refused.
    sensor_id : str, optional
        The sensor's id; an unknown one adds a sensor (its position: ``lat``, ``lon``, ``alt``).
    recorded_at : str, float or datetime, optional
        When the recording starts: ISO 8601 (UTC when no zone is given), Unix seconds, or a datetime.
    lat, lon, alt : float, optional
        Where it was recorded (degrees, metres); they also update the sensor's position.

    Raises
    ------
    IngestError
        Bad metadata or file name (``status`` 400), audio that does not decode (415).
    """
    metadata = _metadata(sensor_id, recorded_at, lat, lon, alt)
    with _Arrival(store, filename) as arrival:
        arrival.write(data)
        return _queue(db, store, arrival, *metadata)


def ingest_stream(db: Database, store: AudioStore, stream: BinaryIO, *, filename: str | None = None,
                  sensor_id: str | None = None, recorded_at: str | float | dt.datetime | None = None,
                  lat: float | None = None, lon: float | None = None, alt: float | None = None) -> tuple[int, bool]:
    """:func:`ingest` of a file object, read in blocks of 1 MiB (an upload never sits whole in memory)."""
    metadata = _metadata(sensor_id, recorded_at, lat, lon, alt)
    with _Arrival(store, filename) as arrival:
        while block := stream.read(_BLOCK):
            arrival.write(block)
        return _queue(db, store, arrival, *metadata)


class _Arrival:
    """A file arriving in the store's ``incoming/`` folder, hashed as it is written; removed unless kept."""

    def __init__(self, store: AudioStore, filename: str | None) -> None:
        self.filename = check_filename(filename)
        self.path = store.incoming()
        self.hash = hashlib.sha256()
        self.size = 0

    def __enter__(self) -> _Arrival:
        self.file = open(self.path, "wb")  # closed by done() or __exit__
        return self

    def write(self, block: bytes) -> None:
        self.file.write(block)
        self.hash.update(block)
        self.size += len(block)

    def done(self) -> str:
        """Close the file; its SHA-256."""
        self.file.close()
        return self.hash.hexdigest()

    def __exit__(self, *exc) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _existing(session: Session, sha256: str) -> int | None:
    return session.scalar(select(Recording.id).where(Recording.sha256 == sha256))


def _queue(db: Database, store: AudioStore, arrival: _Arrival, sensor_id: str | None, recorded_at: dt.datetime | None,
           position: dict[str, float | None]) -> tuple[int, bool]:
    """Keep the arrived file and add its queued row, unless its content is queued already."""
    sha256 = arrival.done()
    if arrival.size == 0:
        raise IngestError(f"{arrival.filename or 'upload'}: empty file (0 bytes)", 415)
    with db.session() as session:
        if (found := _existing(session, sha256)) is not None:
            return found, False
    try:
        stored = store.keep(arrival.path, sha256, audio_extension(arrival.filename, arrival.path))
    except AudioError as exc:
        raise IngestError(f"{arrival.filename or 'upload'}: {exc.reason}", 415) from None
    for attempt in range(2):  # a second try when a concurrent upload added the same content or sensor first
        try:
            with db.transaction() as session:
                if (found := _existing(session, sha256)) is not None:
                    return found, False
                if sensor_id is not None:
                    _touch_sensor(session, sensor_id, position)
                recording_id = session.scalar(insert(Recording).returning(Recording.id).values(
                    sha256=sha256, audio=stored.name, size=stored.size, sensor_id=sensor_id, recorded_at=recorded_at,
                    duration=stored.info.duration, sample_rate=stored.info.sample_rate,
                    channels=stored.info.channels, status="queued", attempts=0, **position))
            break
        except IntegrityError:
            if attempt:
                raise
    db.queued.set()
    return recording_id, True


def _touch_sensor(session: Session, sensor_id: str, position: dict[str, float | None]) -> None:
    """Add an unknown sensor; note when a known one was last heard from, and where, when given."""
    now, given = utc_now(), {key: value for key, value in position.items() if value is not None}
    seen = session.execute(update(Sensor).where(Sensor.id == sensor_id).values(last_seen_at=now, **given)
                           .execution_options(synchronize_session=False))
    if seen.rowcount == 0:  # a new sensor (a concurrent upload adding it first makes the caller try again)
        session.execute(insert(Sensor).values(id=sensor_id, name=sensor_id, created_at=now, last_seen_at=now,
                                              **given))
