"""What the tests of the learning loop share: a store whose detections were reviewed through the API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from servicekit import make_recording

KEY = "test-api-key-123"
#: The synthetic calls of the store's recordings, one recording each (12 s, so windows 0-5, 5-10, 10-12).
CALLS = ("synthetic-trill", "synthetic-upsweep", "synthetic-croak", "synthetic-harmonic")


@dataclass
class ReviewedStore:
    """A store scored by ``bundle`` whose detections were reviewed; ``verdicts``: detection id -> what was said."""

    store: Path
    bundle: Path
    detections: list[dict]
    verdicts: dict[int, dict]


def open_reviewable(bundle: Path, store: Path, *, top_n: int = 2):
    """An in-process service over ``store`` (threshold 0, the ``top_n`` best classes detect), and a client with
    the write key."""
    from fastapi.testclient import TestClient

    from echoengine.detection import DetectOptions
    from echoengine.service.app import create_app
    from echoengine.service.server import open_service

    key = store.parent / f"{store.name}.key"
    key.write_text(KEY + "\n")
    service = open_service(bundle, store=store, options=DetectOptions(threshold=0.0, top_n=top_n), api_key_file=key)
    return service, TestClient(create_app(service), headers={"X-API-Key": KEY})


def upload_and_score(service, client, recordings: list[tuple[bytes, str]]) -> list[int]:
    """Upload recordings (bytes, recorded_at) through the API and let the worker score them; their ids."""
    ids = []
    for i, (data, when) in enumerate(recordings):
        answer = client.post("/api/recordings", files={"file": (f"r{i}.flac", data)},
                             data={"sensor_id": "pond-1", "recorded_at": when})
        assert answer.status_code in (200, 202), answer.text
        ids.append(answer.json()["id"])
    while service.worker.run_once() is not None:
        pass
    return ids


def review(client, detection_id: int, status: str, species: str | None = None, reviewer: str = "ann") -> None:
    body = {"status": status, "reviewer": reviewer, **({"species": species} if species else {})}
    answer = client.post(f"/api/detections/{detection_id}/review", json=body)
    assert answer.status_code == 201, answer.text


def reviewed_store(bundle: Path, store: Path) -> ReviewedStore:
    """Four 12 s recordings (one call each, on 4 days) scored with the two best classes as detections, and their
    eight detections reviewed: the first of each recording confirmed (after an earlier rejection: the latest
    counts) or corrected, the second rejected or left uncertain."""
    service, client = open_reviewable(bundle, store)
    try:
        recordings = [(make_recording(12.0, seed=900 + i, call=call), f"2024-05-0{i + 1}T05:00:00Z")
                      for i, call in enumerate(CALLS)]
        upload_and_score(service, client, recordings)
        detections = sorted(client.get("/api/detections", params={"limit": 100}).json()["items"],
                            key=lambda d: (d["recording_id"], -d["score"], d["species"]))
        verdicts: dict[int, dict] = {}
        for i, detection in enumerate(detections):
            recording, first = detection["recording_id"], i % 2 == 0
            if first and recording % 2:  # confirmed, after a first reviewer's rejection
                review(client, detection["id"], "rejected", reviewer="bob")
                verdicts[detection["id"]] = {"status": "confirmed"}
            elif first:  # the right species is the recording's call (or another, when the model said that one)
                call = CALLS[recording - 1]
                verdicts[detection["id"]] = {"status": "confirmed",
                                             "species": call if call != detection["species"] else CALLS[0]}
            else:
                verdicts[detection["id"]] = {"status": "rejected" if recording <= 2 else "uncertain"}
            review(client, detection["id"], **verdicts[detection["id"]])
        return ReviewedStore(store, bundle, detections, verdicts)
    finally:
        service.stop()
