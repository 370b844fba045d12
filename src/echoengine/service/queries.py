"""The API's read queries: detections by filter (newest first), and counts per species, sensor and model.

A detection's review status is that of its latest review (several reviewers
may review one detection; the last word counts), found with one grouped
subquery that SQLite and PostgreSQL both run.

Examples
--------
>>> DetectionFilter(review="confirmed").review
'confirmed'
>>> DetectionFilter(review="maybe")
Traceback (most recent call last):
...
echoengine.errors.EchoError: review: 'maybe' is not one of unreviewed, reviewed, confirmed, rejected, uncertain
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, selectinload

from echoengine.errors import EchoError
from echoengine.service.schema import REVIEW_STATUSES, Detection, Model, Recording, Review, Sensor

__all__ = ["REVIEW_FILTERS", "DetectionFilter", "count_recording_detections", "list_detections", "model_counts",
           "sensor_counts", "species_counts"]

#: What ``review=`` takes: no review yet, any review, or the latest review's status.
REVIEW_FILTERS = ("unreviewed", "reviewed", *REVIEW_STATUSES)


@dataclass(frozen=True)
class DetectionFilter:
    """Which detections to list: each given field narrows the list (times are naive UTC)."""

    species: str | None = None
    sensor_id: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    min_score: float | None = None
    review: str | None = None

    def __post_init__(self) -> None:
        if self.review is not None and self.review not in REVIEW_FILTERS:
            raise EchoError(f"review: {self.review!r} is not one of {', '.join(REVIEW_FILTERS)}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise EchoError(f"start ({self.start.isoformat()}) is after end ({self.end.isoformat()})")

    def apply(self, query: Select, latest_status) -> Select:
        """``query`` (of detections, joined to their latest review's status) narrowed by the filters."""
        conditions = []
        if self.species is not None:
            conditions.append(Detection.species == self.species)
        if self.sensor_id is not None:
            conditions.append(Detection.recording.has(Recording.sensor_id == self.sensor_id))
        if self.start is not None:
            conditions.append(Detection.time >= self.start)
        if self.end is not None:
            conditions.append(Detection.time <= self.end)
        if self.min_score is not None:
            conditions.append(Detection.score >= self.min_score)
        if self.review == "unreviewed":
            conditions.append(latest_status.is_(None))
        elif self.review == "reviewed":
            conditions.append(latest_status.is_not(None))
        elif self.review is not None:
            conditions.append(latest_status == self.review)
        return query.where(*conditions)


def _latest_reviews():
    """Each reviewed detection's latest review id, as a subquery (``detection_id``, ``review_id``)."""
    return (select(Review.detection_id, func.max(Review.id).label("review_id"))
            .group_by(Review.detection_id).subquery())


def _with_latest_status(query: Select) -> tuple[Select, object]:
    latest = _latest_reviews()
    query = (query.outerjoin(latest, latest.c.detection_id == Detection.id)
             .outerjoin(Review, Review.id == latest.c.review_id))
    return query, Review.status


def list_detections(session: Session, where: DetectionFilter, *, limit: int, offset: int
                    ) -> tuple[int, list[tuple[Detection, str | None]]]:
    """The number of detections that pass the filter, and a page of them (newest first) with their review status."""
    query, status = _with_latest_status(select(Detection, Review.status))
    query = where.apply(query, status)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    page = session.execute(query.order_by(Detection.time.desc(), Detection.id.desc()).limit(limit).offset(offset)
                           .options(selectinload(Detection.recording), selectinload(Detection.model)))
    return total, [(detection, review) for detection, review in page]


def latest_status(session: Session, detection_id: int) -> str | None:
    """The status of a detection's latest review (None: not reviewed)."""
    return session.scalar(select(Review.status).where(Review.detection_id == detection_id)
                          .order_by(Review.id.desc()).limit(1))


def count_recording_detections(session: Session, recording_id: int) -> int:
    """How many detections a recording gave."""
    return session.scalar(select(func.count()).where(Detection.recording_id == recording_id))


def species_counts(session: Session) -> list[dict]:
    """Per species: detections, and those whose latest review confirms them (under a corrected name, if given)."""
    found = dict(session.execute(select(Detection.species, func.count()).group_by(Detection.species)).all())
    latest = _latest_reviews()
    named = func.coalesce(Review.species, Detection.species)
    confirmed = dict(session.execute(
        select(named, func.count()).select_from(Detection)
        .join(latest, latest.c.detection_id == Detection.id).join(Review, Review.id == latest.c.review_id)
        .where(Review.status == "confirmed").group_by(named)).all())
    names = sorted(set(found) | set(confirmed), key=lambda name: (-found.get(name, 0), name))
    return [{"species": name, "detections": found.get(name, 0), "confirmed": confirmed.get(name, 0)}
            for name in names]


def sensor_counts(session: Session) -> list[tuple[Sensor, int]]:
    """Every sensor with its number of recordings, by id."""
    counts = (select(Recording.sensor_id, func.count().label("n")).group_by(Recording.sensor_id).subquery())
    rows = session.execute(select(Sensor, func.coalesce(counts.c.n, 0))
                           .outerjoin(counts, counts.c.sensor_id == Sensor.id).order_by(Sensor.id))
    return [(sensor, n) for sensor, n in rows]


def model_counts(session: Session) -> list[tuple[Model, int]]:
    """Every model served, newest first, with its number of detections."""
    counts = (select(Detection.model_id, func.count().label("n")).group_by(Detection.model_id).subquery())
    rows = session.execute(select(Model, func.coalesce(counts.c.n, 0))
                           .outerjoin(counts, counts.c.model_id == Model.id).order_by(Model.id.desc()))
    return [(model, n) for model, n in rows]
