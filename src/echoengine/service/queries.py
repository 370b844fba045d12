"""The API's read queries: detections by filter and order, counts per species, sensor and model, score strata.

A detection's review status is that of its latest review (several reviewers
may review one detection; the last word counts), found with one grouped
subquery that SQLite and PostgreSQL both run. Score bins are computed in SQL
with the same comparisons as :func:`echoengine.service.sampling.bin_of`
(``score >= k / bins``), so a detection falls in the same bin everywhere.

Examples
--------
>>> DetectionFilter(review="confirmed").review
'confirmed'
>>> DetectionFilter(review="maybe")
Traceback (most recent call last):
...
echoengine.errors.EchoError: review: 'maybe' is not one of unreviewed, reviewed, confirmed, rejected, uncertain
>>> DetectionFilter(min_score=0.8, max_score=0.2)
Traceback (most recent call last):
...
echoengine.errors.EchoError: min_score (0.8) is above max_score (0.2): no detection could pass
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, and_, case, func, literal_column, or_, select
from sqlalchemy.orm import Session, contains_eager

from echoengine.errors import EchoError
from echoengine.service.sampling import bin_edges
from echoengine.service.schema import REVIEW_STATUSES, Detection, Model, Recording, Review, Sensor

__all__ = ["ORDERS", "REVIEW_FILTERS", "DetectionFilter", "count_recording_detections", "detection_scores",
           "detections_by_id", "list_detections", "model_counts", "sensor_counts", "species_counts",
           "stratum_counts"]

#: What ``review=`` takes: no review yet, any review, or the latest review's status.
REVIEW_FILTERS = ("unreviewed", "reviewed", *REVIEW_STATUSES)
#: What ``order=`` takes, and how each sorts (ties by id, the same way).
ORDERS = {"newest": (Detection.time.desc(), Detection.id.desc()),
          "score": (Detection.score.desc(), Detection.id.desc()),
          "oldest": (Detection.time.asc(), Detection.id.asc())}


@dataclass(frozen=True)
class DetectionFilter:
    """Which detections to list: each given field narrows the list (times are naive UTC)."""

    species: str | None = None
    sensor_id: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    min_score: float | None = None
    review: str | None = None
    max_score: float | None = None

    def __post_init__(self) -> None:
        if self.review is not None and self.review not in REVIEW_FILTERS:
            raise EchoError(f"review: {self.review!r} is not one of {', '.join(REVIEW_FILTERS)}")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise EchoError(f"start ({self.start.isoformat()}) is after end ({self.end.isoformat()})")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise EchoError(f"min_score ({self.min_score:g}) is above max_score ({self.max_score:g}): "
                            "no detection could pass")

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
        if self.max_score is not None:
            conditions.append(Detection.score <= self.max_score)
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


def _with_latest_review(query: Select) -> Select:
    """``query`` (from detections) outer-joined to each detection's latest review (``Review``'s columns)."""
    latest = _latest_reviews()
    return (query.outerjoin(latest, latest.c.detection_id == Detection.id)
            .outerjoin(Review, Review.id == latest.c.review_id))


def _loaded(query: Select) -> Select:
    """``query`` (from detections) with each one's recording and model, in the same statement."""
    return (query.join(Detection.recording).join(Detection.model)
            .options(contains_eager(Detection.recording), contains_eager(Detection.model)))


def list_detections(session: Session, where: DetectionFilter, *, limit: int, offset: int, order: str = "newest"
                    ) -> tuple[int, list[tuple[Detection, str | None, str | None]]]:
    """The number of detections that pass the filter, and a page of them in ``order`` (see :data:`ORDERS`),
    each with its latest review's status and species (None: not reviewed, or no species given)."""
    query = where.apply(_with_latest_review(select(Detection, Review.status, Review.species)), Review.status)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    page = session.execute(_loaded(query.order_by(*ORDERS[order]).limit(limit).offset(offset)))
    return total, [(detection, status, species) for detection, status, species in page]


def detections_by_id(session: Session, ids: list[int]) -> dict[int, tuple[Detection, str | None, str | None]]:
    """The detections of ``ids`` (those that exist), each with its latest review's status and species."""
    if not ids:
        return {}
    query = _with_latest_review(select(Detection, Review.status, Review.species)).where(Detection.id.in_(ids))
    rows = session.execute(_loaded(query))
    return {detection.id: (detection, status, species) for detection, status, species in rows}


def detection_scores(session: Session, species: str | None = None) -> list[tuple[int, str, float]]:
    """Every detection's ``(id, species, score)`` (of one species when given), by id."""
    query = select(Detection.id, Detection.species, Detection.score).order_by(Detection.id)
    if species is not None:
        query = query.where(Detection.species == species)
    return [tuple(row) for row in session.execute(query)]


def _score_bin(bins: int):
    """The score bin of a detection, in SQL: how many of the edges ``k / bins`` (k = 1 .. bins - 1) it reaches."""
    edges = bin_edges(bins)[1:-1]
    if not edges:
        return literal_column("0")
    return case(*[(Detection.score >= edge, k) for k, edge in reversed(list(enumerate(edges, start=1)))], else_=0)


def stratum_counts(session: Session, bins: int, species: str | None = None) -> list[tuple[str, int, int, int, int]]:
    """Per species and score bin: ``(species, bin, detections, reviewed, correct)`` for the precision estimate.

    Reviewed: the latest review is confirmed or rejected (uncertain is not a
    verdict); correct: it is confirmed with no other species.
    """
    reviewed = Review.status.in_(("confirmed", "rejected"))
    correct = and_(Review.status == "confirmed", or_(Review.species.is_(None), Review.species == Detection.species))
    inner = _with_latest_review(select(Detection.species.label("species"), _score_bin(bins).label("bin"),
                                       case((reviewed, 1), else_=0).label("reviewed"),
                                       case((correct, 1), else_=0).label("correct")))
    if species is not None:
        inner = inner.where(Detection.species == species)
    rows = inner.subquery()
    grouped = (select(rows.c.species, rows.c.bin, func.count(), func.sum(rows.c.reviewed), func.sum(rows.c.correct))
               .group_by(rows.c.species, rows.c.bin))
    return [(name, int(k), int(n), int(r), int(c)) for name, k, n, r, c in session.execute(grouped)]


def latest_status(session: Session, detection_id: int) -> str | None:
    """The status of a detection's latest review (None: not reviewed)."""
    return session.scalar(select(Review.status).where(Review.detection_id == detection_id)
                          .order_by(Review.id.desc()).limit(1))


def count_recording_detections(session: Session, recording_id: int) -> int:
    """How many detections a recording gave."""
    return session.scalar(select(func.count()).where(Detection.recording_id == recording_id))


def species_counts(session: Session) -> list[dict]:
    """Per detected species, most detections first: its detections and what their latest reviews say.

    ``confirmed`` counts those confirmed as the detected species,
    ``relabelled`` those whose latest review names another species (a false
    positive of the detected one, whatever its status), and ``rejected``,
    ``uncertain`` and ``unreviewed`` the rest: the five add up to ``detections``.
    """
    relabelled = and_(Review.species.is_not(None), Review.species != Detection.species)
    verdict = case((relabelled, "relabelled"), (Review.status.is_(None), "unreviewed"), else_=Review.status)
    rows = session.execute(_with_latest_review(select(Detection.species, verdict, func.count()))
                           .group_by(Detection.species, verdict))
    found: dict[str, dict] = {}
    for species, status, n in rows:
        counts = found.setdefault(species, {"species": species, "detections": 0, **dict.fromkeys(
            ("confirmed", "relabelled", "rejected", "uncertain", "unreviewed"), 0)})
        counts["detections"] += n
        counts[status] += n
    return sorted(found.values(), key=lambda row: (-row["detections"], row["species"]))


def sensor_counts(session: Session) -> list[tuple[Sensor, int, int]]:
    """Every sensor with its numbers of recordings and of detections, by id."""
    recordings = (select(Recording.sensor_id, func.count().label("n")).group_by(Recording.sensor_id).subquery())
    detections = (select(Recording.sensor_id, func.count(Detection.id).label("n"))
                  .join(Detection, Detection.recording_id == Recording.id).group_by(Recording.sensor_id).subquery())
    rows = session.execute(select(Sensor, func.coalesce(recordings.c.n, 0), func.coalesce(detections.c.n, 0))
                           .outerjoin(recordings, recordings.c.sensor_id == Sensor.id)
                           .outerjoin(detections, detections.c.sensor_id == Sensor.id).order_by(Sensor.id))
    return [(sensor, n, d) for sensor, n, d in rows]


def model_counts(session: Session) -> list[tuple[Model, int]]:
    """Every model served, newest first, with its number of detections."""
    counts = (select(Detection.model_id, func.count().label("n")).group_by(Detection.model_id).subquery())
    rows = session.execute(select(Model, func.coalesce(counts.c.n, 0))
                           .outerjoin(counts, counts.c.model_id == Model.id).order_by(Model.id.desc()))
    return [(model, n) for model, n in rows]
