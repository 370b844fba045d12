"""The detection service against real servers: uvicorn in a subprocess, SQLite and a real PostgreSQL.

The contract tests run once per database (the ``backend`` parameter) on one
server each; the durability tests (``kill -9`` and restart, a new bundle
served later) start their own. PostgreSQL tests skip, saying why, when its
server programs are not installed (Debian: ``apt-get install postgresql``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from servers import Server
from servicekit import SCORING, changed_weights, make_recording, one_line_4xx, small_bundle, statuses


@pytest.fixture(scope="module")
def bundle(synthetic_dataset, tmp_path_factory) -> Path:
    """A small_cnn bundle on a light front end, trained for one epoch: service plumbing only."""
    return small_bundle(synthetic_dataset, tmp_path_factory)


SMALL = {"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400, "n_fft": 1024}
# every window detects its two best classes: each recording gives detections, of more than one species
CONTRACT = (*SCORING, "--max-upload-mb", "1")
PATHS = {"/api/recordings", "/api/recordings/{recording_id}", "/api/detections", "/api/detections/{detection_id}",
         "/api/detections/{detection_id}/audio", "/api/detections/{detection_id}/spectrogram.png",
         "/api/detections/{detection_id}/review", "/api/species", "/api/sensors", "/api/models", "/healthz",
         "/api/reviews/{review_id}", "/api/review-queue", "/api/precision", "/api/models/{model_id}/activate"}


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(bundle, new_database, tmp_path_factory):
    """The contract tests' server: threshold 0, top 2 classes per window, uploads up to 1 MB."""
    store = tmp_path_factory.mktemp("contract") / "store"
    running = Server(bundle, store, db=new_database(), options=CONTRACT).wait_ready()
    running.store = store
    yield running
    running.stop()


# ---- helpers -----------------------------------------------------------------------------------------------------
def _upload(server: Server, data: bytes, name: str = "clip.flac", **fields):
    return server.client.post("/api/recordings", files={"file": (name, data)},
                              data={k: str(v) for k, v in fields.items()})


def _detections(server: Server, **filters) -> dict:
    answer = server.client.get("/api/detections", params={"limit": 1000, **filters})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _library_events(bundle: Path, data: bytes, tmp_path: Path) -> set[tuple]:
    """What ``detect``'s own functions find in the recording, with the service's options."""
    from echoengine.api import load_bundles
    from echoengine.detection import DetectOptions, file_events, score_file
    from echoengine.scoring import window_scorer

    path = tmp_path / f"{hashlib.sha256(data).hexdigest()[:12]}.flac"
    path.write_bytes(data)
    options = DetectOptions(threshold=0.0, top_n=2)
    scorer = window_scorer(load_bundles(bundle))
    events = file_events(score_file(scorer, path, options), scorer.classes, scorer.config,
                         thresholds=np.zeros(len(scorer.classes)), options=options)
    return {(e.label, e.start, e.end, round(e.score, 2)) for e in events.itertuples()}


def _served_events(items: list[dict], recording_id: int) -> set[tuple]:
    return {(d["species"], d["start"], d["end"], round(d["score"], 2)) for d in items
            if d["recording_id"] == recording_id}



# ---- the contract, on each database ------------------------------------------------------------------------------
def test_an_upload_is_queued_then_scored_as_detect_scores_it(server, bundle, tmp_path):
    data = make_recording(6.0, seed=1)
    answer = _upload(server, data, "dawn chorus.flac", sensor_id="t-upload", recorded_at="2024-05-01T06:00:00+02:00",
                     lat=51.5, lon=-0.12, alt=30)
    assert answer.status_code == 202 and answer.json()["status"] == "queued", answer.text
    recording_id = answer.json()["id"]
    done = server.wait_for([recording_id])[0]
    assert done["status"] == "done" and done["error"] is None, done
    assert done["duration"] == pytest.approx(6.0) and done["sample_rate"] == 32000
    assert done["sensor_id"] == "t-upload" and done["recorded_at"] == "2024-05-01T04:00:00Z"
    items = _detections(server, sensor_id="t-upload")["items"]
    assert done["detections"] == len(items) > 0
    assert _served_events(items, recording_id) == _library_events(bundle, data, tmp_path)
    start = dt.datetime(2024, 5, 1, 4)
    for item in items:
        assert item["time"].startswith((start + dt.timedelta(seconds=item["start"])).isoformat())
        assert item["model_version"] == "bundle/1" and item["url"] == f"{server.url}/api/detections/{item['id']}"
        scores = [entry["score"] for entry in item["top_species"]]
        assert 0 < len(scores) <= 5 and scores == sorted(scores, reverse=True)
        assert item["score"] == pytest.approx(dict((e["species"], e["score"]) for e in item["top_species"])
                                              [item["species"]], abs=1e-4)


def test_the_same_content_uploaded_again_gets_the_same_id(server):
    data = make_recording(3.0, seed=2)
    first = _upload(server, data, "first-name.flac", sensor_id="t-same")
    again = _upload(server, data, "another name.flac", sensor_id="t-same")
    assert first.status_code == 202 and again.status_code == 200, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    other = _upload(server, make_recording(3.0, seed=3), "first-name.flac", sensor_id="t-same")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    stored = [p for p in (server.store / "audio").rglob("*") if p.is_file()]
    digest = hashlib.sha256(data).hexdigest()
    assert [p.name for p in stored].count(f"{digest}.flac") == 1
    assert all("name" not in p.name for p in stored)  # the client's names never name a file
    server.wait_for([first.json()["id"], other.json()["id"]])


def _chunked_upload(server: Server, size: int):
    """A multipart upload sent without a length (chunked), ``size`` random bytes of file."""
    def body():
        yield b'--B0uNd\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(size // 65536):
            yield np.random.default_rng(0).bytes(65536)
        yield b"\r\n--B0uNd--\r\n"
    return server.client.post("/api/recordings", content=body(),
                              headers={"content-type": "multipart/form-data; boundary=B0uNd"})


def test_every_bad_upload_gets_a_4xx_with_a_one_line_reason(server):
    before = sorted(p for p in (server.store / "audio").rglob("*") if p.is_file())
    good = make_recording(2.0, seed=4)
    truncated = make_recording(4.0, seed=5)[:20000]
    one_line_4xx(_upload(server, b"this is a text file, not audio\n" * 50, "notes.wav"), 415, "not a readable audio")
    one_line_4xx(_upload(server, b"", "empty.wav"), 415, "empty")
    one_line_4xx(_upload(server, truncated, "cut.flac"), 415, "cut.flac")
    one_line_4xx(_upload(server, np.random.default_rng(1).bytes(5000), "blob"), 415, "not a readable audio")
    for trick in ("../../etc/evil.flac", "folder/inside.flac", "..\\evil.flac", "/abs/olute.flac", ".."):
        one_line_4xx(_upload(server, good, trick), 400, "plain file name")
    one_line_4xx(_upload(server, good, "a" * 396 + ".wav"), 400, "too long (400 characters, at most 255)")
    one_line_4xx(_upload(server, np.random.default_rng(2).bytes(3 << 20), "big.wav"), 413, "--max-upload-mb")
    one_line_4xx(_chunked_upload(server, 3 << 20), 413, "--max-upload-mb")
    one_line_4xx(_upload(server, good, lat=91), 422, "lat")
    one_line_4xx(_upload(server, good, lon="nan"), 422, "lon")
    one_line_4xx(_upload(server, good, recorded_at="last tuesday"), 400, "ISO 8601")
    for edge in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1900-01-01T00:30:00+02:00"):
        one_line_4xx(_upload(server, good, recorded_at=edge), 400, f"recorded_at: {edge} is not a time a recording "
                      "was made (years 1900 to 2200)")
    one_line_4xx(_upload(server, good, sensor_id="pond\x01"), 400, "sensor_id")
    one_line_4xx(server.client.post("/api/recordings", data={"sensor_id": "x"}), 422, "file")
    after = sorted(p for p in (server.store / "audio").rglob("*") if p.is_file())
    assert after == before  # nothing refused was kept, not even half an upload


def test_unknown_ids_and_bad_filters_get_a_4xx(server):
    get = server.client.get
    for path in ("/api/recordings/999999", "/api/detections/999999", "/api/detections/999999/audio",
                 "/api/detections/999999/spectrogram.png"):
        one_line_4xx(get(path), 404, "999999")
    review = {"status": "confirmed", "reviewer": "ann"}
    one_line_4xx(server.client.post("/api/detections/999999/review", json=review), 404, "no detection")
    for path in ("/api/recordings/abc", "/api/detections/0", "/api/detections/99999999999", "/api/detections/-1"):
        one_line_4xx(get(path), 422)
    for params, status, words in [({"limit": -1}, 422, "limit"), ({"offset": -5}, 422, "offset"),
                                  ({"limit": 10**6}, 422, "limit"), ({"min_score": 2}, 422, "min_score"),
                                  ({"min_score": "nan"}, 422, "min_score"), ({"species": "owl\x00"}, 422, "species"),
                                  ({"start": "yesterday"}, 400, "start"), ({"end": "2024-13-01"}, 400, "end"),
                                  ({"start": "2024-05-02", "end": "2024-05-01"}, 400, "after"),
                                  ({"review": "maybe"}, 400, "review"),
                                  ({"start": "0001-01-01T00:00:00+14:00"}, 400, "start: 0001-01-01T00:00:00+14:00"),
                                  ({"end": "9999-12-31T23:59:59-12:00"}, 400, "years 1900 to 2200")]:
        one_line_4xx(get("/api/detections", params=params), status, words)
    for body in (b'{"status": "confirmed",', b"\xff\xfe", b"status=confirmed"):
        one_line_4xx(server.client.post("/api/detections/1/review", content=body,
                                         headers={"content-type": "application/json"}), 422,
                      "the request body is not valid JSON")


def _wait_detections(server: Server, sensor: str, recordings: list[tuple[bytes, str]]) -> list[int]:
    ids = [_upload(server, data, sensor_id=sensor, recorded_at=when).json()["id"] for data, when in recordings]
    assert all(r["status"] == "done" for r in server.wait_for(ids))
    return ids


def test_detections_are_filtered_paged_and_reviewed(server):
    first, second = _wait_detections(server, "t-review", [
        (make_recording(6.0, 10, "synthetic-upsweep"), "2024-05-01T06:00Z"),
        (make_recording(6.0, 11), "2024-05-02T06:00:00Z")])
    listed = _detections(server, sensor_id="t-review")
    items, total = listed["items"], listed["total"]
    assert total == len(items) > 2 and {d["recording_id"] for d in items} == {first, second}
    assert [(d["time"], d["id"]) for d in items] == sorted(((d["time"], d["id"]) for d in items), reverse=True)
    later = _detections(server, sensor_id="t-review", start="2024-05-02T00:00:00Z")
    assert {d["recording_id"] for d in later["items"]} == {second}
    earlier = _detections(server, sensor_id="t-review", end="2024-05-01T23:59:59Z")
    assert later["total"] + earlier["total"] == total
    species = items[0]["species"]
    assert {d["species"] for d in _detections(server, sensor_id="t-review", species=species)["items"]} == {species}
    high = _detections(server, sensor_id="t-review", min_score=0.4)
    assert high["total"] == sum(d["score"] >= 0.4 for d in items)
    page = server.client.get("/api/detections", params={"sensor_id": "t-review", "limit": 1, "offset": 1}).json()
    assert page["total"] == total and [d["id"] for d in page["items"]] == [items[1]["id"]]

    counts_before = {row["species"]: row for row in server.client.get("/api/species").json()}
    target, other = items[0], items[1]
    for verdict in ({"status": "confirmed", "reviewer": "ann"},
                    {"status": "rejected", "reviewer": "bob", "species": "synthetic-croak", "comment": "a frog"}):
        answer = server.client.post(f"/api/detections/{target['id']}/review", json=verdict)
        assert answer.status_code == 201 and answer.json()["reviewer"] == verdict["reviewer"], answer.text
    assert server.client.post(f"/api/detections/{other['id']}/review",
                              json={"status": "confirmed", "reviewer": "carol"}).status_code == 201
    detail = server.client.get(f"/api/detections/{target['id']}").json()
    assert [r["reviewer"] for r in detail["reviews"]] == ["ann", "bob"] and detail["review"] == "rejected"
    by_review = {status: {d["id"] for d in _detections(server, sensor_id="t-review", review=status)["items"]}
                 for status in ("rejected", "confirmed", "reviewed", "unreviewed")}
    assert by_review["rejected"] == {target["id"]} and by_review["confirmed"] == {other["id"]}
    assert by_review["reviewed"] == {target["id"], other["id"]} and len(by_review["unreviewed"]) == total - 2
    counts = {row["species"]: row for row in server.client.get("/api/species").json()}
    before = counts_before.get(other["species"], {"confirmed": 0})
    assert counts[other["species"]]["confirmed"] == before["confirmed"] + 1
    for bad in ({"status": "maybe", "reviewer": "ann"}, {"status": "confirmed", "reviewer": ""},
                {"status": "confirmed"}):
        one_line_4xx(server.client.post(f"/api/detections/{target['id']}/review", json=bad), 422)
    sensors = {s["id"]: s for s in server.client.get("/api/sensors").json()}
    assert sensors["t-review"]["recordings"] == 2 and sensors["t-review"]["detections"] == total
    models = server.client.get("/api/models").json()
    assert [(m["name"], m["version"], m["serving"]) for m in models] == [("bundle", 1, True)]


def test_a_detection_has_its_audio_with_context_and_a_spectrogram(server):
    from PIL import Image

    _wait_detections(server, "t-media", [(make_recording(8.0, 20), "2024-06-01T00:00:00Z")])
    detection = _detections(server, sensor_id="t-media")["items"][0]
    answer = server.client.get(f"/api/detections/{detection['id']}/audio")
    assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(answer.content))
    expected = min(8.0, detection["end"] + 1.0) - max(0.0, detection["start"] - 1.0)
    assert rate == 32000 and len(samples) / rate == pytest.approx(expected, abs=1e-3)
    picture = server.client.get(f"/api/detections/{detection['id']}/spectrogram.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(picture.content))
    _, top, width, height = map(int, picture.headers["X-Plot-Box"].split(","))
    assert image.format == "PNG" and height == 256 and width >= 50 and image.size[1] > top + height


def test_openapi_has_exactly_the_paths_and_the_docs_need_no_network(server):
    spec = server.client.get("/openapi.json").json()
    assert set(spec["paths"]) == PATHS
    home = server.client.get("/")  # the review page (tests/test_review_page.py drives it in Chromium)
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert 'href="docs"' in home.text and "default-src 'self'" in home.headers["content-security-policy"]
    docs = server.client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert all(path in docs.text for path in PATHS)
    assert "<script" not in docs.text and "cdn" not in docs.text.lower()
    health = server.client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "bundle/1"


def test_the_migrations_make_exactly_the_tables_of_the_schema(new_database, tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from echoengine.service.db import Database, default_url
    from echoengine.service.schema import Base

    db = Database.connect(new_database() or default_url(tmp_path))
    try:
        assert db.migrate() == db.migrate() == "0004"  # a second run finds nothing to do
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        db.dispose()


# ---- durability, on each database --------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_kill_9_with_work_queued_then_a_restart_scores_each_recording_once(bundle, new_database, tmp_path):
    from echoengine.service.db import Database, default_url
    from echoengine.service.ingest import ingest
    from echoengine.service.store import AudioStore

    store = tmp_path / "store"
    audio = AudioStore(store)
    url = new_database()
    db_url = url or default_url(store)
    db = Database.connect(db_url)
    db.migrate()
    recordings = [make_recording(30.0, seed=100 + i, call=("synthetic-trill", "synthetic-upsweep")[i % 2])
                  for i in range(6)]
    ids = [ingest(db, audio, data, filename=f"night{i}.flac", sensor_id="t-kill")[0]
           for i, data in enumerate(recordings)]  # queued before any server runs (the bridge's way in)
    db.dispose()
    first = Server(bundle, store, db=url, options=SCORING).wait_ready()
    deadline = time.monotonic() + 120
    while "running" not in statuses(db_url).values() and "done" not in statuses(db_url).values():
        assert time.monotonic() < deadline, first.output()
        time.sleep(0.02)
    children = _children(first.process.pid)  # its scoring process
    assert children, "serve scores in a process of its own"
    first.kill()
    left = statuses(db_url)
    assert "queued" in left.values() or "running" in left.values(), left  # killed with work to do
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{child}").exists() for child in children):  # it ends with the server
        assert time.monotonic() < deadline, f"the scoring process outlived a killed server: {children}"
        time.sleep(0.2)
    second = Server(bundle, store, db=url, options=SCORING).wait_ready()
    try:
        finished = second.wait_for(ids)
        assert [r["status"] for r in finished] == ["done"] * len(ids)
        assert [r["attempts"] for r in finished] == [1 + (left[i] == "running") for i in ids]
        items = _detections(second, sensor_id="t-kill")["items"]
        assert len(items) == sum(r["detections"] for r in finished)
        for recording_id, data in zip(ids, recordings, strict=True):
            served = [(d["species"], d["start"]) for d in items if d["recording_id"] == recording_id]
            assert len(served) == len(set(served)), "a detection stored twice"
            assert _served_events(items, recording_id) == _library_events(bundle, data, tmp_path)
    finally:
        second.stop()


def test_a_new_bundle_adds_a_model_row_and_old_detections_keep_theirs(bundle, new_database, tmp_path):
    from echoengine.detection import DetectOptions
    from echoengine.service.db import Database, default_url
    from echoengine.service.served import load_model

    store, url = tmp_path / "store", new_database()
    first = Server(bundle, store, db=url, options=SCORING).wait_ready()
    try:
        (old,) = _wait_detections(first, "t-model", [(make_recording(5.0, 200), "2024-07-01T00:00:00Z")])
        before = _detections(first, sensor_id="t-model")["items"]
    finally:
        first.stop()
    second = Server(changed_weights(bundle, tmp_path / "v2"), store, db=url, options=SCORING).wait_ready()
    try:
        (new,) = _wait_detections(second, "t-model", [(make_recording(5.0, 201), "2024-07-02T00:00:00Z")])
        models = second.client.get("/api/models").json()
        after = _detections(second, sensor_id="t-model")["items"]
    finally:
        second.stop()
    assert [(m["name"], m["version"], m["serving"]) for m in models] == [("bundle", 2, True), ("bundle", 1, False)]
    assert models[0]["weights_hash"] != models[1]["weights_hash"]
    def stored(detection: dict) -> dict:  # less the links, which name the server that answers
        return {k: v for k, v in detection.items() if not k.endswith("url")}

    assert [stored(d) for d in after if d["recording_id"] == old] == [stored(d) for d in before]  # untouched
    assert {d["model_version"] for d in before} == {"bundle/1"}
    assert {d["model_version"] for d in after if d["recording_id"] == new} == {"bundle/2"}
    db = Database.connect(url or default_url(store))
    try:
        assert load_model(db, bundle, DetectOptions(threshold=0.0, top_n=2)).row.version == 1  # served again: reused
        assert load_model(db, bundle, DetectOptions(threshold=0.3, top_n=2)).row.version == 3  # other thresholds
    finally:
        db.dispose()
