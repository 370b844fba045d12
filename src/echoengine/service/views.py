"""Rows as the API shows them: plain JSON-able dicts, times in ISO 8601 UTC (``...Z``).

The HTTP API and the worker's ``on_detection`` callbacks (what the MQTT bridge
publishes) use these same functions, so a detection reads the same everywhere.

Examples
--------
>>> import datetime as dt
>>> iso(dt.datetime(2024, 5, 1, 4, 30))
'2024-05-01T04:30:00Z'
>>> iso(None) is None
True
"""

from __future__ import annotations

import datetime as dt

from echoengine.service.schema import Detection, Model, Recording, Review, Sensor

__all__ = ["detection_json", "detection_link", "iso", "model_json", "recording_json", "review_json", "sensor_json"]


def iso(time: dt.datetime | None) -> str | None:
    """A naive UTC time as ISO 8601 with ``Z`` (None stays None)."""
    return None if time is None else time.isoformat(timespec="milliseconds" if time.microsecond else "seconds") + "Z"


def detection_link(detection_id: int, base_url: str = "") -> str:
    """The API address of a detection (absolute when the server's base URL is given).

    Examples
    --------
    >>> detection_link(7, "http://127.0.0.1:8000")
    'http://127.0.0.1:8000/api/detections/7'
    """
    return f"{base_url.rstrip('/')}/api/detections/{detection_id}"


def detection_json(detection: Detection, *, base_url: str = "", review: str | None = None,
                   reviewed_species: str | None = None) -> dict:
    """A detection with its recording's sensor and duration, its model's version and its links.

    ``review`` is the status of its latest review (None: unreviewed) and
    ``reviewed_species`` that review's correction of the species (None: none
    given); it needs ``detection.recording`` and ``detection.model`` loaded
    (or a live session).
    """
    model, link = detection.model, detection_link(detection.id, base_url)
    return {
        "id": detection.id, "recording_id": detection.recording_id, "sensor_id": detection.recording.sensor_id,
        "species": detection.species, "start": detection.start, "end": detection.end, "time": iso(detection.time),
        "score": detection.score, "mean_score": detection.mean_score, "windows": detection.windows,
        "top_species": detection.top_species, "ranks": detection.lineage,
        "model": {"id": model.id, "name": model.name, "version": model.version},
        "model_version": f"{model.name}/{model.version}", "review": review, "reviewed_species": reviewed_species,
        "duration": detection.recording.duration, "created_at": iso(detection.created_at),
        "url": link, "audio_url": f"{link}/audio", "spectrogram_url": f"{link}/spectrogram.png",
    }


def review_json(review: Review) -> dict:
    """One reviewer's verdict."""
    return {"id": review.id, "detection_id": review.detection_id, "status": review.status,
            "species": review.species, "reviewer": review.reviewer, "comment": review.comment,
            "created_at": iso(review.created_at)}


def recording_json(recording: Recording, detections: int) -> dict:
    """A recording's place in the queue, its audio and how many detections it gave."""
    return {"id": recording.id, "status": recording.status, "sha256": recording.sha256,
            "duration": recording.duration, "sample_rate": recording.sample_rate, "channels": recording.channels,
            "size": recording.size, "sensor_id": recording.sensor_id, "recorded_at": iso(recording.recorded_at),
            "received_at": iso(recording.received_at), "lat": recording.lat, "lon": recording.lon,
            "alt": recording.alt, "detections": detections, "error": recording.error,
            "model_id": recording.model_id, "attempts": recording.attempts,
            "finished_at": iso(recording.finished_at)}


def model_json(model: Model, detections: int = 0) -> dict:
    """A served model: name, version, weights hash, classes, thresholds, options."""
    return {"id": model.id, "name": model.name, "version": model.version, "weights_hash": model.weights_hash,
            "classes": model.classes, "thresholds": dict(zip(model.classes, model.thresholds, strict=True)),
            "options": model.options, "created_at": iso(model.created_at),
            "activated_at": iso(model.activated_at), "detections": detections}


def sensor_json(sensor: Sensor, recordings: int = 0, detections: int = 0) -> dict:
    """A sensor, its last known position, and its numbers of recordings and detections."""
    return {"id": sensor.id, "name": sensor.name, "lat": sensor.lat, "lon": sensor.lon, "alt": sensor.alt,
            "created_at": iso(sensor.created_at), "last_seen_at": iso(sensor.last_seen_at),
            "recordings": recordings, "detections": detections}
