"""The HTTP API's endpoints (FastAPI): recordings in, detections out, reviews, and what the server knows.

The paths are fixed (clients rely on them); :func:`echoengine.service.app.create_app`
mounts this router and gives it the running service as ``app.state.service``.
Every bad input is a 4xx whose ``detail`` is one line.

Examples
--------
>>> [route.path for route in writes.routes]
['/api/recordings', '/api/detections/{detection_id}/review', '/api/reviews/{review_id}']
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from echoengine.errors import AudioError, EchoError
from echoengine.service import media, queries, sampling
from echoengine.service.access import API_KEY_HEADER
from echoengine.service.ingest import IngestError, ingest_stream, parse_time
from echoengine.service.schema import REVIEW_STATUSES, Detection, Model, Recording, Review
from echoengine.service.views import detection_json, model_json, recording_json, review_json, sensor_json

__all__ = ["ReviewIn", "router"]

_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_ID = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="the id the API gave")]
_Text = Annotated[str | None, Query(max_length=200, pattern=_NO_CONTROL)]
_Angle = {"allow_inf_nan": False}
_Score = Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False)]
_Bins = Annotated[int, Query(ge=1, le=20, description="equal-width score bins over [0, 1]")]


def _given(value: str | None) -> str | None:
    """A query parameter sent empty (an HTML form's blank field) is one not sent."""
    return value or None


def _service(request: Request):
    return request.app.state.service


def _client(request: Request) -> tuple[str | None, str | None]:
    return (request.client.host if request.client else None), request.headers.get(API_KEY_HEADER)


def may_read(request: Request) -> None:
    """Refuse a read the access rules do not allow (403; 401 for a wrong key)."""
    host, given = _client(request)
    access = _service(request).access
    if not access.may_read(host, given):
        raise HTTPException(*access.read_refusal(given))


def may_write(request: Request) -> None:
    """Refuse a write the access rules do not allow (401 without the right key, 403 from another machine)."""
    host, given = _client(request)
    access = _service(request).access
    if not access.may_write(host, given):
        raise HTTPException(*access.write_refusal(given))


router = APIRouter()
reads = APIRouter(dependencies=[Depends(may_read)])
writes = APIRouter(dependencies=[Depends(may_write)])


class ReviewIn(BaseModel):
    """A reviewer's verdict on a detection."""

    status: Literal["confirmed", "rejected", "uncertain"]
    species: str | None = Field(None, min_length=1, max_length=200, pattern=_NO_CONTROL,
                                description="the right species, when the detection's is wrong")
    reviewer: str = Field(min_length=1, max_length=100, pattern=_NO_CONTROL)
    comment: str | None = Field(None, max_length=2000, pattern=r"^[^\x00]*$")
    new_species: bool = Field(False, description="accept a corrected species that no served model knows (a new "
                              "class for the next model); without it such a name is refused, as a typo would be")


class Queued(BaseModel):
    """A recording's id and its status in the queue."""

    id: int
    status: str


@writes.post("/api/recordings", status_code=202, response_model=Queued,
             responses={200: {"model": Queued, "description": "this content was uploaded before: its id"},
                        413: {"description": "larger than --max-upload-mb"},
                        415: {"description": "not audio, or audio that does not decode"}})
def upload_recording(
    request: Request, response: Response,
    file: Annotated[UploadFile, File(description="the recording (WAV, FLAC, OGG, MP3, M4A, ...)")],
    sensor_id: Annotated[str | None, Form(max_length=128)] = None,
    recorded_at: Annotated[str | None, Form(description="when it starts, ISO 8601 (UTC if no zone)")] = None,
    lat: Annotated[float | None, Form(ge=-90, le=90, **_Angle)] = None,
    lon: Annotated[float | None, Form(ge=-180, le=180, **_Angle)] = None,
    alt: Annotated[float | None, Form(allow_inf_nan=False)] = None,
) -> dict:
    """Queue a recording for detection (202); the same content again gives the same id (200)."""
    service = _service(request)
    try:
        recording_id, created = ingest_stream(service.db, service.store, file.file, filename=file.filename,
                                              sensor_id=sensor_id, recorded_at=recorded_at, lat=lat, lon=lon, alt=alt)
    except IngestError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if created:
        return {"id": recording_id, "status": "queued"}
    response.status_code = 200
    with service.db.session() as session:
        return {"id": recording_id, "status": session.get(Recording, recording_id).status}


def _found(session: Session, table, row_id: int, *options):
    row = session.get(table, row_id, options=list(options))
    if row is None:
        raise HTTPException(404, f"no {table.__tablename__[:-1]} with id {row_id}")
    return row


@reads.get("/api/recordings/{recording_id}")
def get_recording(request: Request, recording_id: _ID) -> dict:
    """A recording's status, duration, sensor, number of detections and error."""
    with _service(request).db.session() as session:
        recording = _found(session, Recording, recording_id)
        return recording_json(recording, queries.count_recording_detections(session, recording_id))


@reads.get("/api/detections")
def list_detections(
    request: Request, species: _Text = None, sensor_id: _Text = None,
    start: Annotated[str | None, Query(description="from this time (ISO 8601)")] = None,
    end: Annotated[str | None, Query(description="up to this time (ISO 8601)")] = None,
    min_score: _Score = None, max_score: _Score = None,
    review: Annotated[str | None, Query(description="unreviewed, reviewed, " + ", ".join(REVIEW_STATUSES))] = None,
    order: Annotated[Literal["newest", "score", "oldest"], Query(description="newest first, best score first, "
                                                                             "or oldest first")] = "newest",
    limit: Annotated[int, Query(ge=0, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> dict:
    """Detections that pass the filters, newest first (or by ``order``): ``{"total": N, "items": [...]}``."""
    service = _service(request)
    try:
        where = queries.DetectionFilter(_given(species), _given(sensor_id), parse_time(_given(start), "start"),
                                        parse_time(_given(end), "end"), min_score, _given(review), max_score)
    except EchoError as exc:
        raise HTTPException(400, str(exc)) from None
    with service.db.session() as session:
        total, page = queries.list_detections(session, where, limit=limit, offset=offset, order=order)
        items = [detection_json(d, base_url=service.base_url, review=status, reviewed_species=named)
                 for d, status, named in page]
    return {"total": total, "items": items}


def _detection(session: Session, detection_id: int) -> Detection:
    return _found(session, Detection, detection_id, selectinload(Detection.recording),
                  selectinload(Detection.model), selectinload(Detection.reviews))


@reads.get("/api/detections/{detection_id}")
def get_detection(request: Request, detection_id: _ID) -> dict:
    """A detection with all its reviews, oldest first."""
    service = _service(request)
    with service.db.session() as session:
        detection = _detection(session, detection_id)
        reviews = [review_json(r) for r in detection.reviews]
        latest = reviews[-1] if reviews else {"status": None, "species": None}
        return {**detection_json(detection, base_url=service.base_url, review=latest["status"],
                                 reviewed_species=latest["species"]), "reviews": reviews}


def _clip(request: Request, detection_id: int):
    """The detection's audio with context: samples, rate, the clip's start and the event's span (s)."""
    service = _service(request)
    with service.db.session() as session:
        detection = _detection(session, detection_id)
        name, duration = detection.recording.audio, detection.recording.duration
        event = (detection.start, detection.end)
        start, end = media.context_span(*event, duration)
    try:
        samples, rate = service.store.clip(name, start=start, end=end)
    except AudioError as exc:  # the file was removed from the store, or damaged, since it was checked
        raise HTTPException(410, f"the audio of detection {detection_id} cannot be read from the store "
                            f"({exc.reason})") from None
    return samples, rate, start, event


@reads.get("/api/detections/{detection_id}/audio", response_class=Response,
           responses={200: {"content": {"audio/wav": {}}, "description": "the event with a second either side"}})
def get_detection_audio(request: Request, detection_id: _ID) -> Response:
    """The detection's audio with a second of context either side, as WAV (the recording's own rate, mono)."""
    samples, rate, _, _ = _clip(request, detection_id)
    return Response(media.wav_bytes(samples, rate), media_type="audio/wav",
                    headers={"Content-Disposition": f'inline; filename="detection-{detection_id}.wav"'})


@reads.get("/api/detections/{detection_id}/spectrogram.png", response_class=Response,
           responses={200: {"content": {"image/png": {}},
                            "description": "spectrogram of the audio endpoint's clip, with labelled axes "
                                           "(time in s into the recording, frequency in kHz) and the event marked"}})
def get_detection_spectrogram(request: Request, detection_id: _ID) -> Response:
    """The spectrogram of the detection's audio (with its context), as PNG, its event's time span marked.

    ``X-Plot-Box`` gives the plot's left, top, width and height in pixels
    and ``X-Plot-Time`` the seconds (into the recording) at its left and
    right edges, for a page that draws a play head over it.
    """
    samples, rate, offset, event = _clip(request, detection_id)
    picture = media.spectrogram_png(samples, rate, offset=offset, event=event)
    left, top, width, height = picture.box
    return Response(picture.data, media_type="image/png",
                    headers={"X-Plot-Box": f"{left},{top},{width},{height}",
                             "X-Plot-Time": f"{picture.start:g},{picture.end:g}"})


@writes.post("/api/detections/{detection_id}/review", status_code=201)
def review_detection(request: Request, detection_id: _ID, verdict: ReviewIn) -> dict:
    """Add a reviewer's verdict (several reviewers may review one detection; the latest counts in filters)."""
    with _service(request).db.transaction() as session:
        detection = _found(session, Detection, detection_id)
        if verdict.species is not None and not verdict.new_species:
            _check_known_species(session, verdict.species, detection.species)
        review = Review(detection_id=detection_id, **verdict.model_dump(exclude={"new_species"}))
        session.add(review)
        session.flush()
        return review_json(review)


def _check_known_species(session: Session, species: str, detected: str) -> None:
    """Refuse (422) a corrected species that no model of this store knows, unless the reviewer said it is new."""
    if species == detected or any(species in classes for classes in session.scalars(select(Model.classes))):
        return
    raise HTTPException(422, f"species: {species!r} is not a class of any model this store has served (a typo?); "
                             'send "new_species": true to add it as a new species')


@writes.delete("/api/reviews/{review_id}")
def delete_review(request: Request, review_id: _ID) -> dict:
    """Remove a review (the undo of a verdict): the detection's previous review, if any, is its latest again."""
    with _service(request).db.transaction() as session:
        session.delete(_found(session, Review, review_id))
    return {"id": review_id, "deleted": True}


@reads.get("/api/species")
def list_species(request: Request) -> list[dict]:
    """Per species: its detections, and how many have each latest review status (and none)."""
    with _service(request).db.session() as session:
        return queries.species_counts(session)


@reads.get("/api/review-queue")
def review_queue(
    request: Request, species: _Text = None, bins: _Bins = 5,
    budget: Annotated[int, Query(ge=1, le=5000, description="how many detections to review")] = 50,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1, description="the sample's seed (the same seed, the same "
                                                                "sample)")] = 0,
) -> dict:
    """A stratified random sample of detections to review (species x score bin), reviewed ones included.

    Each stratum says how many detections it holds, how many were sampled
    and how many of those have a review (any status); each item its stratum.
    How the budget is shared and the sample drawn: :mod:`echoengine.service.sampling`.
    """
    service = _service(request)
    with service.db.session() as session:
        strata, picks = sampling.stratified_sample(queries.detection_scores(session, _given(species)),
                                                   budget=budget, bins=bins, seed=seed)
        found = queries.detections_by_id(session, [i for i, _ in picks])
        items = [{**detection_json(found[i][0], base_url=service.base_url, review=found[i][1],
                                   reviewed_species=found[i][2]), "stratum": stratum}
                 for i, stratum in picks if i in found]
    done = {}
    for item in items:
        key = (item["species"], item["stratum"]["bin"])
        done[key] = done.get(key, 0) + (item["review"] is not None)
    strata = [{**s, "reviewed": done.get((s["species"], s["bin"]), 0)} for s in strata]
    return {"budget": budget, "seed": seed, "bins": bins, "strata": strata, "items": items}


@reads.get("/api/precision")
def precision(request: Request, species: _Text = None, bins: _Bins = 5) -> list[dict]:
    """Per species: the confirmed share of reviewed detections per score bin, and the estimated precision of
    the detections at or above each bin's low edge, with 95 % intervals (see :mod:`echoengine.service.sampling`)."""
    with _service(request).db.session() as session:
        counts = queries.stratum_counts(session, bins, _given(species))
    return sampling.precision_table(counts, bins)


@reads.get("/api/sensors")
def list_sensors(request: Request) -> list[dict]:
    """The sensors, with their last known position and numbers of recordings and detections."""
    with _service(request).db.session() as session:
        return [sensor_json(*counts) for counts in queries.sensor_counts(session)]


@reads.get("/api/models")
def list_models(request: Request) -> list[dict]:
    """Every model this database has served, newest first; ``serving`` marks the one this server scores new
    uploads with (the store's active model: ``activated_at`` is when it last became so; a candidate has none)."""
    service = _service(request)
    with service.db.session() as session:
        return [{**model_json(model, n), "serving": model.id == service.served.row.id}
                for model, n in queries.model_counts(session)]


@router.get("/healthz")
def health(request: Request) -> JSONResponse:
    """``ok`` (200) while the database answers and the worker runs, else 503; the queue's length."""
    service = _service(request)
    try:
        with service.db.session() as session:
            counts = dict(session.execute(select(Recording.status, func.count()).group_by(Recording.status)).all())
    except SQLAlchemyError as exc:
        return JSONResponse({"status": f"database unreachable ({type(exc).__name__})"}, status_code=503)
    ok = service.worker.alive
    return JSONResponse({"status": "ok" if ok else "worker stopped", "worker": ok,
                         "model": f"{service.served.row.name}/{service.served.row.version}",
                         "queued": counts.get("queued", 0), "running": counts.get("running", 0)},
                        status_code=200 if ok else 503)


router.include_router(writes)
router.include_router(reads)
