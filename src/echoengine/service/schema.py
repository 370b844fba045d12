"""The service's tables: sensors, recordings, models, detections and reviews (SQLAlchemy 2 ORM).

One schema for every database SQLAlchemy speaks (SQLite by default,
PostgreSQL by URL); the migrations in ``migrations/versions/`` create it, and
a test checks that they create exactly these tables. Times are naive UTC
(SQLite keeps no time zone): the API turns them into ISO 8601 with ``Z``.

``recordings`` is also the work queue: a row's ``status`` goes ``queued`` ->
``running`` -> ``done`` or ``failed`` (:mod:`echoengine.service.worker`).
Audio is stored by reference: ``recordings.audio`` is the name of the file in
the audio store (:mod:`echoengine.service.store`), never its bytes.

Examples
--------
>>> sorted(Base.metadata.tables)
['detections', 'models', 'recordings', 'reviews', 'sensors']
>>> STATUSES, REVIEW_STATUSES
(('queued', 'running', 'done', 'failed'), ('confirmed', 'rejected', 'uncertain'))
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["REVIEW_STATUSES", "STATUSES", "Base", "Detection", "Model", "Recording", "Review", "Sensor",
           "utc_now"]

#: A recording's way through the queue.
STATUSES = ("queued", "running", "done", "failed")
#: What a reviewer says of a detection.
REVIEW_STATUSES = ("confirmed", "rejected", "uncertain")


def utc_now() -> dt.datetime:
    """The time now, naive UTC, to the microsecond (as every time column holds it).

    Examples
    --------
    >>> utc_now().tzinfo is None
    True
    """
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """The declarative base of the service's tables."""


class Sensor(Base):
    """A field sensor, known by its own id (``sensorId`` of Project Echo's messages); its last known position."""

    __tablename__ = "sensors"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    alt: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class Model(Base):
    """A bundle as it was served: weights, classes, thresholds and scoring options; one row per distinct set.

    ``version`` counts the distinct rows of one ``name`` (1, 2, ...);
    ``fingerprint`` identifies the set, so serving the same bundle again
    reuses its row and serving changed weights or thresholds adds one.
    """

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    weights_hash: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    classes: Mapped[list] = mapped_column(JSON)
    thresholds: Mapped[list] = mapped_column(JSON)
    options: Mapped[dict] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
    # when it last became the model new uploads are scored with; the latest is the store's active model
    activated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)


class Recording(Base):
    """An uploaded recording, unique by content hash; its place in the queue and what scoring it gave."""

    __tablename__ = "recordings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    audio: Mapped[str] = mapped_column(String(200))  # the store's name of the file: <hash><extension>
    size: Mapped[int] = mapped_column(BigInteger)
    sensor_id: Mapped[str | None] = mapped_column(ForeignKey("sensors.id"))
    recorded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    alt: Mapped[float | None] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    sensor: Mapped[Sensor | None] = relationship()
    __table_args__ = (Index("ix_recordings_status", "status", "id"), Index("ix_recordings_sensor", "sensor_id", "id"),
                      CheckConstraint(f"status IN {STATUSES}", name="ck_recordings_status"))


class Detection(Base):
    """An event found in a recording by one model: species, time span, scores and the five best species."""

    __tablename__ = "detections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    species: Mapped[str] = mapped_column(Text)
    start: Mapped[float] = mapped_column(Float)  # seconds into the recording
    end: Mapped[float] = mapped_column(Float)
    time: Mapped[dt.datetime] = mapped_column(DateTime)  # recorded_at (else received_at) + start
    score: Mapped[float] = mapped_column(Float)  # the max over the event's windows
    mean_score: Mapped[float] = mapped_column(Float)
    windows: Mapped[int] = mapped_column(Integer)
    top_species: Mapped[list] = mapped_column(JSON)  # [{"species": ..., "score": ...}] x 5, best first
    # a model of a taxonomy: {"family": {"label": ..., "score": ...}, ..., "label": {...}}; else NULL
    lineage: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
    recording: Mapped[Recording] = relationship()
    model: Mapped[Model] = relationship()
    reviews: Mapped[list[Review]] = relationship(order_by="Review.id", back_populates="detection")
    __table_args__ = (
        UniqueConstraint("recording_id", "model_id", "species", "start", name="uq_detections_event"),
        Index("ix_detections_time", "time", "id"),
        Index("ix_detections_score", "score", "id"),  # the indexes from here on: migration 0002 (review)
        Index("ix_detections_species_time", "species", "time", "id"),
        Index("ix_detections_species_score", "species", "score"),
    )


class Review(Base):
    """One reviewer's verdict on a detection (several per detection; the latest is its current verdict)."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    detection_id: Mapped[int] = mapped_column(ForeignKey("detections.id"))
    status: Mapped[str] = mapped_column(String(16))
    species: Mapped[str | None] = mapped_column(String(200))  # a correction of the detection's species
    reviewer: Mapped[str] = mapped_column(String(100))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
    detection: Mapped[Detection] = relationship(back_populates="reviews")
    __table_args__ = (CheckConstraint(f"status IN {REVIEW_STATUSES}", name="ck_reviews_status"),
                      Index("ix_reviews_detection_latest", "detection_id", "id"))
