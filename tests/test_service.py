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
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from echoengine import catalog
from echoengine.config import EchoConfig
from echoengine.synthetic import synthesize_call
from servers import PostgresCluster, Server, free_port, postgres_bin

SMALL = {"n_mels": 64, "image_height": 64, "image_width": 64, "hop_length": 400, "n_fft": 1024}
# every window detects its two best classes: each recording gives detections, of more than one species
SCORING = ("--threshold", "0", "--top-n", "2")
CONTRACT = (*SCORING, "--max-upload-mb", "1")
PATHS = {"/api/recordings", "/api/recordings/{recording_id}", "/api/detections", "/api/detections/{detection_id}",
         "/api/detections/{detection_id}/audio", "/api/detections/{detection_id}/spectrogram.png",
         "/api/detections/{detection_id}/review", "/api/species", "/api/sensors", "/api/models", "/healthz"}


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(synthetic_dataset, tmp_path_factory) -> Path:
    """A small_cnn bundle on a light front end (16 kHz), trained for one epoch: service plumbing only."""
    import torch

    from echoengine.training import fit

    config = EchoConfig().replace(audio={"sample_rate": 16000}, frontend={**SMALL, "fmax": 7000.0},
                                  model={"backbone": "small_cnn", "head": "linear"},
                                  train={"epochs": 1, "device": "cpu"})
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    out = tmp_path_factory.mktemp("served") / "bundle"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(table, table, catalog.class_names(table), config, out, progress=False, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session; skipped when PostgreSQL is not installed."""
    folder = postgres_bin()
    if folder is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl not found (Debian: apt-get install postgresql): "
                    "the PostgreSQL half of the service tests is skipped")
    cluster = PostgresCluster(folder)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def new_database(request):
    """A function that gives a fresh database URL of the backend (None: the store's own SQLite file)."""
    if request.param == "sqlite":
        return lambda: None
    return request.getfixturevalue("postgres").database


@pytest.fixture(scope="module")
def server(bundle, new_database, tmp_path_factory):
    """The contract tests' server: threshold 0, top 2 classes per window, uploads up to 1 MB."""
    store = tmp_path_factory.mktemp("contract") / "store"
    running = Server(bundle, store, db=new_database(), options=CONTRACT).wait_ready()
    running.store = store
    yield running
    running.stop()


# ---- helpers -----------------------------------------------------------------------------------------------------
def _recording(seconds: float, seed: int, call: str = "synthetic-trill", form: str = "FLAC") -> bytes:
    """A synthetic recording at 32 kHz (the bundle resamples it), as file bytes; each seed its own content."""
    samples = synthesize_call(call, seconds=seconds, rng=np.random.default_rng(seed), snr_db=10.0)
    buffer = io.BytesIO()
    sf.write(buffer, samples, 32000, format=form)
    return buffer.getvalue()


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


def _one_line_4xx(answer, status: int, words: str = "") -> None:
    assert answer.status_code == status, (answer.status_code, answer.text)
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and 0 < len(detail) < 300, detail
    assert words.lower() in detail.lower(), detail


# ---- the contract, on each database ------------------------------------------------------------------------------
def test_an_upload_is_queued_then_scored_as_detect_scores_it(server, bundle, tmp_path):
    data = _recording(6.0, seed=1)
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
    data = _recording(3.0, seed=2)
    first = _upload(server, data, "first-name.flac", sensor_id="t-same")
    again = _upload(server, data, "another name.flac", sensor_id="t-same")
    assert first.status_code == 202 and again.status_code == 200, (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    other = _upload(server, _recording(3.0, seed=3), "first-name.flac", sensor_id="t-same")
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
    good = _recording(2.0, seed=4)
    truncated = _recording(4.0, seed=5)[:20000]
    _one_line_4xx(_upload(server, b"this is a text file, not audio\n" * 50, "notes.wav"), 415, "not a readable audio")
    _one_line_4xx(_upload(server, b"", "empty.wav"), 415, "empty")
    _one_line_4xx(_upload(server, truncated, "cut.flac"), 415, "cut.flac")
    _one_line_4xx(_upload(server, np.random.default_rng(1).bytes(5000), "blob"), 415, "not a readable audio")
    for trick in ("../../etc/evil.flac", "folder/inside.flac", "..\\evil.flac", "/abs/olute.flac", ".."):
        _one_line_4xx(_upload(server, good, trick), 400, "plain file name")
    _one_line_4xx(_upload(server, good, "a" * 396 + ".wav"), 400, "too long (400 characters, at most 255)")
    _one_line_4xx(_upload(server, np.random.default_rng(2).bytes(3 << 20), "big.wav"), 413, "--max-upload-mb")
    _one_line_4xx(_chunked_upload(server, 3 << 20), 413, "--max-upload-mb")
    _one_line_4xx(_upload(server, good, lat=91), 422, "lat")
    _one_line_4xx(_upload(server, good, lon="nan"), 422, "lon")
    _one_line_4xx(_upload(server, good, recorded_at="last tuesday"), 400, "ISO 8601")
    for edge in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1900-01-01T00:30:00+02:00"):
        _one_line_4xx(_upload(server, good, recorded_at=edge), 400, f"recorded_at: {edge} is not a time a recording "
                      "was made (years 1900 to 2200)")
    _one_line_4xx(_upload(server, good, sensor_id="pond\x01"), 400, "sensor_id")
    _one_line_4xx(server.client.post("/api/recordings", data={"sensor_id": "x"}), 422, "file")
    after = sorted(p for p in (server.store / "audio").rglob("*") if p.is_file())
    assert after == before  # nothing refused was kept, not even half an upload


def test_unknown_ids_and_bad_filters_get_a_4xx(server):
    get = server.client.get
    for path in ("/api/recordings/999999", "/api/detections/999999", "/api/detections/999999/audio",
                 "/api/detections/999999/spectrogram.png"):
        _one_line_4xx(get(path), 404, "999999")
    review = {"status": "confirmed", "reviewer": "ann"}
    _one_line_4xx(server.client.post("/api/detections/999999/review", json=review), 404, "no detection")
    for path in ("/api/recordings/abc", "/api/detections/0", "/api/detections/99999999999", "/api/detections/-1"):
        _one_line_4xx(get(path), 422)
    for params, status, words in [({"limit": -1}, 422, "limit"), ({"offset": -5}, 422, "offset"),
                                  ({"limit": 10**6}, 422, "limit"), ({"min_score": 2}, 422, "min_score"),
                                  ({"min_score": "nan"}, 422, "min_score"), ({"species": "owl\x00"}, 422, "species"),
                                  ({"start": "yesterday"}, 400, "start"), ({"end": "2024-13-01"}, 400, "end"),
                                  ({"start": "2024-05-02", "end": "2024-05-01"}, 400, "after"),
                                  ({"review": "maybe"}, 400, "review"),
                                  ({"start": "0001-01-01T00:00:00+14:00"}, 400, "start: 0001-01-01T00:00:00+14:00"),
                                  ({"end": "9999-12-31T23:59:59-12:00"}, 400, "years 1900 to 2200")]:
        _one_line_4xx(get("/api/detections", params=params), status, words)
    for body in (b'{"status": "confirmed",', b"\xff\xfe", b"status=confirmed"):
        _one_line_4xx(server.client.post("/api/detections/1/review", content=body,
                                         headers={"content-type": "application/json"}), 422,
                      "the request body is not valid JSON")


def _wait_detections(server: Server, sensor: str, recordings: list[tuple[bytes, str]]) -> list[int]:
    ids = [_upload(server, data, sensor_id=sensor, recorded_at=when).json()["id"] for data, when in recordings]
    assert all(r["status"] == "done" for r in server.wait_for(ids))
    return ids


def test_detections_are_filtered_paged_and_reviewed(server):
    first, second = _wait_detections(server, "t-review", [
        (_recording(6.0, 10, "synthetic-upsweep"), "2024-05-01T06:00Z"),
        (_recording(6.0, 11), "2024-05-02T06:00:00Z")])
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
        _one_line_4xx(server.client.post(f"/api/detections/{target['id']}/review", json=bad), 422)
    sensors = {s["id"]: s for s in server.client.get("/api/sensors").json()}
    assert sensors["t-review"]["recordings"] == 2
    models = server.client.get("/api/models").json()
    assert [(m["name"], m["version"], m["serving"]) for m in models] == [("bundle", 1, True)]


def test_a_detection_has_its_audio_with_context_and_a_spectrogram(server):
    from PIL import Image

    _wait_detections(server, "t-media", [(_recording(8.0, 20), "2024-06-01T00:00:00Z")])
    detection = _detections(server, sensor_id="t-media")["items"][0]
    answer = server.client.get(f"/api/detections/{detection['id']}/audio")
    assert answer.status_code == 200 and answer.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(answer.content))
    expected = min(8.0, detection["end"] + 1.0) - max(0.0, detection["start"] - 1.0)
    assert rate == 32000 and len(samples) / rate == pytest.approx(expected, abs=1e-3)
    picture = server.client.get(f"/api/detections/{detection['id']}/spectrogram.png")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(picture.content))
    assert image.format == "PNG" and image.size[1] == 256 and image.size[0] > 50


def test_openapi_has_exactly_the_paths_and_the_docs_need_no_network(server):
    spec = server.client.get("/openapi.json").json()
    assert set(spec["paths"]) == PATHS
    home = server.client.get("/", follow_redirects=False)
    assert home.status_code in (302, 307) and home.headers["location"] == "/docs", home
    docs = server.client.get("/", follow_redirects=True)
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
        assert db.migrate() == db.migrate() == "0001"  # a second run finds nothing to do
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        db.dispose()


# ---- durability, on each database --------------------------------------------------------------------------------
def _statuses(url: str) -> dict[int, str]:
    from echoengine.service.db import Database
    from echoengine.service.schema import Recording

    db = Database.connect(url)
    try:
        with db.session() as session:
            return dict(session.query(Recording.id, Recording.status).all())
    finally:
        db.dispose()


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
    recordings = [_recording(30.0, seed=100 + i, call=("synthetic-trill", "synthetic-upsweep")[i % 2])
                  for i in range(6)]
    ids = [ingest(db, audio, data, filename=f"night{i}.flac", sensor_id="t-kill")[0]
           for i, data in enumerate(recordings)]  # queued before any server runs (the bridge's way in)
    db.dispose()
    first = Server(bundle, store, db=url, options=SCORING).wait_ready()
    deadline = time.monotonic() + 120
    while "running" not in _statuses(db_url).values() and "done" not in _statuses(db_url).values():
        assert time.monotonic() < deadline, first.output()
        time.sleep(0.02)
    first.kill()
    left = _statuses(db_url)
    assert "queued" in left.values() or "running" in left.values(), left  # killed with work to do
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


def _changed_weights(bundle: Path, folder: Path) -> Path:
    """A copy of the bundle with other weights (as a retrained model would have): the same name, a new hash."""
    import torch

    copy = folder / bundle.name
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("checkpoint.pt", "tensorboard"))
    state = torch.load(copy / "weights.pt", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name] = state[name] + 0.05
    torch.save(state, copy / "weights.pt")
    return copy


def test_a_new_bundle_adds_a_model_row_and_old_detections_keep_theirs(bundle, new_database, tmp_path):
    from echoengine.detection import DetectOptions
    from echoengine.service.db import Database, default_url
    from echoengine.service.served import load_model

    store, url = tmp_path / "store", new_database()
    first = Server(bundle, store, db=url, options=SCORING).wait_ready()
    try:
        (old,) = _wait_detections(first, "t-model", [(_recording(5.0, 200), "2024-07-01T00:00:00Z")])
        before = _detections(first, sensor_id="t-model")["items"]
    finally:
        first.stop()
    second = Server(_changed_weights(bundle, tmp_path / "v2"), store, db=url, options=SCORING).wait_ready()
    try:
        (new,) = _wait_detections(second, "t-model", [(_recording(5.0, 201), "2024-07-02T00:00:00Z")])
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


def test_sensor_messages_over_mqtt_are_scored_and_their_detections_published(bundle, tmp_path):
    import base64
    import json
    import queue

    import paho.mqtt.client as paho
    import paho.mqtt.publish as publish
    from paho.mqtt.enums import CallbackAPIVersion

    from broker import Broker

    heard: queue.Queue = queue.Queue()
    with Broker(tmp_path) as broker:
        listener = paho.Client(CallbackAPIVersion.VERSION2)
        listener.on_message = lambda client, userdata, message: heard.put(json.loads(message.payload))
        listener.connect("127.0.0.1", broker.port)
        listener.subscribe("echo/detections", qos=1)
        listener.loop_start()
        good = {"schema": "echoengine.audio/1", "sensor_id": "pond-9", "recorded_at": "2024-05-01T06:30:00Z",
                "lat": 51.5, "lon": -0.1, "audio": base64.b64encode(_recording(4.0, seed=600)).decode()}
        for topic, payload in (("echo/in/a", b"{not json"), ("echo/in/b", json.dumps(good))):
            publish.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1", port=broker.port)  # kept for
        server = Server(bundle, tmp_path / "store",  # the bridge, which subscribes once the server is up
                        options=(*SCORING, "--mqtt", broker.url("echo/in/#"), "--mqtt-out", "echo/detections"))
        try:
            server.wait_ready()
            detection = heard.get(timeout=90)
            assert detection["sensor_id"] == "pond-9" and detection["model_version"] == "bundle/1"
            assert detection["link"] == f"{server.url}/api/detections/{detection['id']}"
            recording = server.client.get(f"/api/recordings/{detection['recording_id']}").json()
            assert recording["status"] == "done" and recording["recorded_at"] == "2024-05-01T06:30:00Z"
            assert recording["lat"] == 51.5 and recording["detections"] >= 1
            assert "echo/in/a skipped" in server.output()  # the malformed message, logged; the bridge went on
        finally:
            server.stop()
            listener.loop_stop()


# ---- in-process: access rules, the command line --------------------------------------------------------------------
def test_writes_need_the_key_and_reads_are_open_to_this_machine_only(bundle, tmp_path):
    from fastapi.testclient import TestClient

    from echoengine.service.app import create_app
    from echoengine.service.server import open_service

    key = tmp_path / "key"
    key.write_text("correct horse battery staple\n")
    secret = {"X-API-Key": "correct horse battery staple"}
    data = {"file": ("a.flac", _recording(2.0, seed=300))}
    # TestClient's address is "testclient": another machine, as far as the rules go
    keyed = TestClient(create_app(open_service(bundle, store=tmp_path / "a", api_key_file=key)))
    _one_line_4xx(keyed.get("/api/species"), 403, "X-API-Key header")
    assert keyed.get("/api/species", headers=secret).status_code == 200
    _one_line_4xx(keyed.get("/api/species", headers={"X-API-Key": "wrong"}), 401, "wrong API key")
    _one_line_4xx(keyed.post("/api/recordings", files=data), 401, "API key in the X-API-Key header")
    _one_line_4xx(keyed.post("/api/recordings", files=data, headers={"X-API-Key": "wrong"}), 401, "wrong API key")
    assert keyed.post("/api/recordings", files=data, headers=secret).status_code == 202
    _one_line_4xx(keyed.post("/api/detections/1/review", json={"status": "confirmed", "reviewer": "a"}), 401)
    public = TestClient(create_app(open_service(bundle, store=tmp_path / "b", public_reads=True)))
    assert public.get("/api/detections").status_code == 200
    _one_line_4xx(public.post("/api/recordings", files=data), 403, "--api-key-file")
    closed = TestClient(create_app(open_service(bundle, store=tmp_path / "c")))  # no key: nothing to send
    for headers in ({}, {"X-API-Key": "anything"}):
        answer = closed.get("/api/species", headers=headers)
        _one_line_4xx(answer, 403, "reads are open to this machine only; start the server with --public-reads or "
                      "--api-key-file")
        assert "header" not in answer.json()["detail"]


def test_the_worker_gives_each_stored_detection_to_the_callbacks_once(bundle, tmp_path):
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection, Recording
    from echoengine.service.server import open_service

    service = open_service(bundle, store=tmp_path / "store", options=DetectOptions(threshold=0.0, top_n=2),
                           base_url="http://sensors.example:8000")
    heard: list[dict] = []
    service.worker.on_detection(heard.append)
    service.worker.on_detection(lambda detection: 1 / 0)  # a broken callback is logged, and changes nothing
    recording, created = ingest(service.db, service.store, _recording(6.0, seed=400), filename="m.wav",
                                sensor_id="mqtt-7", recorded_at=1714545000.0)
    assert created and service.worker.run_once() == recording and service.worker.run_once() is None
    assert heard and {d["recording_id"] for d in heard} == {recording}
    first = heard[0]
    assert first["sensor_id"] == "mqtt-7" and first["model_version"] == "bundle/1"
    assert first["url"] == f"http://sensors.example:8000/api/detections/{first['id']}"
    assert {"id", "species", "start", "end", "score", "time", "top_species"} <= set(first)
    assert first["time"].startswith("2024-05-01T06:30:00")
    with service.db.session() as session:
        assert session.get(Recording, recording).status == "done"
        assert session.query(Detection).count() == len(heard)
    service.stop()


def test_queued_recordings_are_scored_together_and_give_each_one_scored_alone(bundle, tmp_path):
    """One claim scores several uploads in shared batches (as detect does); each gets its own detections."""
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection, Recording
    from echoengine.service.server import open_service

    service = open_service(bundle, store=tmp_path / "store", options=DetectOptions(threshold=0.0, top_n=1))
    recordings = [ingest(service.db, service.store, _recording(seconds, seed=800 + i), filename=f"{i}.flac")[0]
                  for i, seconds in enumerate((3.0, 12.0, 7.0))]
    assert service.worker.run_once() == recordings[0] and service.worker.run_once() is None  # one claim: all three
    with service.db.session() as session:
        assert [session.get(Recording, r).status for r in recordings] == ["done"] * 3
        for recording in recordings:
            stored = sorted((d.species, d.start, d.end, round(d.score, 4)) for d in
                            session.query(Detection).filter_by(recording_id=recording))
            events, _ = service.served.events(service.store.path(session.get(Recording, recording).audio))
            alone = sorted(zip(events["label"], events["start"], events["end"], events["score"].round(4)))
            assert stored == [(str(a), float(b), float(c), float(d)) for a, b, c, d in alone] and stored
    service.stop()


def test_an_exported_bundle_is_served_with_onnx_as_pytorch_serves_it(bundle, tmp_path):
    from echoengine import api
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection, Recording
    from echoengine.service.server import open_service

    exported = tmp_path / "exported" / bundle.name
    shutil.copytree(bundle, exported, ignore=shutil.ignore_patterns("checkpoint.pt", "tensorboard"))
    check = tmp_path / "check.flac"
    check.write_bytes(_recording(6.0, seed=700))
    api.export(exported, check=[check])
    data = _recording(12.0, seed=701)
    found = {}
    for onnx in (False, True):
        service = open_service(exported, store=tmp_path / "store", options=DetectOptions(threshold=0.0, top_n=2,
                                                                                          onnx=onnx))
        recording, _ = ingest(service.db, service.store, data, filename=f"{onnx}.flac", sensor_id=f"onnx-{onnx}")
        if onnx:  # the same content: queue it again for the graph's model
            with service.db.transaction() as session:
                session.get(Recording, recording).status = "queued"
        assert service.worker.run_once() == recording
        with service.db.session() as session:
            rows = session.query(Detection).filter_by(model_id=service.served.row.id).all()
            found[onnx] = {(d.species, d.start, d.end): d.score for d in rows}
        assert service.served.row.options["onnx"] is onnx and service.served.row.version == 1 + onnx
        service.stop()
    assert found[True].keys() == found[False].keys()
    assert all(abs(found[True][key] - found[False][key]) < 1e-3 for key in found[True])


def test_a_recording_that_cannot_be_scored_fails_with_its_reason_and_its_audio_is_a_410(bundle, tmp_path):
    from fastapi.testclient import TestClient

    from echoengine.detection import DetectOptions
    from echoengine.service.app import create_app
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Recording
    from echoengine.service.server import open_service
    from echoengine.service.worker import MAX_ATTEMPTS

    service = open_service(bundle, store=tmp_path / "store", public_reads=True, options=DetectOptions(threshold=0.0))
    done, _ = ingest(service.db, service.store, _recording(3.0, seed=500), filename="a.flac")
    gone, _ = ingest(service.db, service.store, _recording(3.0, seed=501), filename="b.flac")
    stuck, _ = ingest(service.db, service.store, _recording(3.0, seed=502), filename="c.flac")
    with service.db.transaction() as session:
        service.store.path(session.get(Recording, gone).audio).unlink()
        session.get(Recording, stuck).attempts = MAX_ATTEMPTS  # the server died on it every time
    for _ in range(3):  # done, failed (no audio), failed (too many attempts)
        service.worker.run_once()
    client = TestClient(create_app(service))
    answers = {i: client.get(f"/api/recordings/{i}").json() for i in (done, gone, stuck)}
    assert answers[done]["status"] == "done"
    assert answers[gone]["status"] == "failed" and "file not found" in answers[gone]["error"]
    assert answers[stuck]["status"] == "failed" and "gave up" in answers[stuck]["error"]
    detection = client.get("/api/detections").json()["items"][0]
    with service.db.session() as session:
        service.store.path(session.get(Recording, done).audio).unlink()
    _one_line_4xx(client.get(f"/api/detections/{detection['id']}/audio"), 410, "cannot be read")
    service.stop()


def test_serve_on_the_command_line(bundle, tmp_path, capsys):
    from echoengine.cli import main
    from echoengine.cli_options import parse
    from echoengine.service.server import DEFAULT_MAX_UPLOAD_MB

    args = parse(["serve", str(bundle), "--store", str(tmp_path), "--species", "a,b", "--threshold", "0.3"])
    assert (args.host, args.port, args.db, args.max_upload_mb) == ("127.0.0.1", 8000, None, DEFAULT_MAX_UPLOAD_MB)
    for argv, words in [(["serve", str(tmp_path / "none"), "--store", str(tmp_path / "s")], "none"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--db", "nosuch://x"], "--db"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--species", "owl"], "owl"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--max-upload-mb", "0"], "positive"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--api-key-file", "/none"], "key"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--mqtt-out", "t"], "--mqtt"),
                        (["serve", str(tmp_path), "--store", str(tmp_path / "s")], "neither a model bundle"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--mqtt", "http://h/t"], "mqtt://"),
                        (["serve", str(bundle), "--store", str(tmp_path / "s"), "--mqtt", "mqtt://h/t", "--mqtt-out",
                          "out/#"], "wildcards")]:
        assert main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: ") and "\n" not in error and words in error, error
    assert not (tmp_path / "s").exists()  # a failed start leaves no store behind
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["serve", str(bundle), "--store", str(kept), "--species", "owl"]) == 2
    assert (kept / "notes.txt").read_text() == "mine"  # a store that was there keeps what it held


def test_a_second_server_on_the_store_is_refused_before_it_touches_the_queue(bundle, tmp_path, capsys):
    import os
    import socket

    from echoengine.cli import main
    from echoengine.errors import EchoError
    from echoengine.service.db import default_url
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Recording
    from echoengine.service.server import open_service

    store = tmp_path / "store"
    first = open_service(bundle, store=store)
    recording, _ = ingest(first.db, first.store, _recording(3.0, seed=900), filename="a.flac")
    with first.db.transaction() as session:
        session.get(Recording, recording).status = "running"  # the first server scores it
    with pytest.raises(EchoError, match=f"^--store {store}: another server uses this store \\(process {os.getpid()}"):
        open_service(bundle, store=store)
    capsys.readouterr()  # what was logged so far
    assert main(["serve", str(bundle), "--store", str(store), "--port", str(free_port())]) == 2
    error = capsys.readouterr().err.strip()
    assert "another server uses this store" in error and "\n" not in error, error
    assert _statuses(default_url(store)) == {recording: "running"}
    with socket.socket() as busy:  # the store is free once the first stops; a busy port is refused first
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        first.stop()
        port = busy.getsockname()[1]
        assert main(["serve", str(bundle), "--store", str(store), "--port", str(port)]) == 2
        error = capsys.readouterr().err.strip()
        assert f"--port {port}: 127.0.0.1:{port} is in use" in error and "\n" not in error, error
    assert _statuses(default_url(store)) == {recording: "running"}  # nothing requeued it
    open_service(bundle, store=store).stop()  # a stopped server lets the store go


def test_sensor_messages_sent_while_the_server_is_down_are_queued_when_it_is_back(bundle, tmp_path, caplog):
    import base64
    import json
    import logging

    import paho.mqtt.publish as publish

    from broker import Broker
    from echoengine.service.schema import Recording
    from echoengine.service.server import open_service

    def bridge_of(store):
        service = open_service(bundle, store=store, mqtt=url)
        for part in service.parts:  # the bridge alone: the worker is not needed here
            part.start()
        assert service.parts[0].wait_subscribed(10)
        return service, service.parts[0]

    message = json.dumps({"schema": "echoengine.audio/1", "sensor_id": "late-1",
                          "audio": base64.b64encode(_recording(2.0, seed=910)).decode()})
    with Broker(tmp_path) as broker, caplog.at_level(logging.INFO, logger="echoengine.service.mqtt"):
        url = broker.url("echo/late/#")
        first, bridge = bridge_of(tmp_path / "store")
        first.stop()
        publish.single("echo/late/a", message, qos=1, hostname="127.0.0.1", port=broker.port)  # while it is down
        other, stranger = bridge_of(tmp_path / "other")
        other.stop()
        again, back = bridge_of(tmp_path / "store")
        try:
            assert back.persistent and back.client_id == bridge.client_id != stranger.client_id
            deadline = time.monotonic() + 10
            while back.counts["submitted"] < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            with again.db.session() as session:
                (row,) = session.query(Recording).all()
                assert (row.sensor_id, row.status) == ("late-1", "queued")
            publish.single("echo/late/b", message, qos=1, hostname="127.0.0.1", port=broker.port)
            deadline = time.monotonic() + 10
            while back.counts["submitted"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            again.stop()
    assert f"from sensor late-1 not queued: its audio is already stored as recording {row.id}" in caplog.text
    assert stranger.counts["received"] == 0
