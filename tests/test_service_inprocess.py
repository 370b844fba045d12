"""The detection service in-process and on the command line: the worker, access rules, ONNX serving,
one server per store, and sensor messages over a real mosquitto (see test_service.py for the contract
against real servers on SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from servers import Server, free_port
from servicekit import SCORING, make_recording, one_line_4xx, small_bundle, statuses


@pytest.fixture(scope="module")
def bundle(synthetic_dataset, tmp_path_factory) -> Path:
    """A small_cnn bundle on a light front end, trained for one epoch: service plumbing only."""
    return small_bundle(synthetic_dataset, tmp_path_factory)


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
                "lat": 51.5, "lon": -0.1, "audio": base64.b64encode(make_recording(4.0, seed=600)).decode()}
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
    data = {"file": ("a.flac", make_recording(2.0, seed=300))}
    # TestClient's address is "testclient": another machine, as far as the rules go
    keyed = TestClient(create_app(open_service(bundle, store=tmp_path / "a", api_key_file=key)))
    one_line_4xx(keyed.get("/api/species"), 403, "X-API-Key header")
    assert keyed.get("/api/species", headers=secret).status_code == 200
    one_line_4xx(keyed.get("/api/species", headers={"X-API-Key": "wrong"}), 401, "wrong API key")
    one_line_4xx(keyed.post("/api/recordings", files=data), 401, "API key in the X-API-Key header")
    one_line_4xx(keyed.post("/api/recordings", files=data, headers={"X-API-Key": "wrong"}), 401, "wrong API key")
    assert keyed.post("/api/recordings", files=data, headers=secret).status_code == 202
    one_line_4xx(keyed.post("/api/detections/1/review", json={"status": "confirmed", "reviewer": "a"}), 401)
    public = TestClient(create_app(open_service(bundle, store=tmp_path / "b", public_reads=True)))
    assert public.get("/api/detections").status_code == 200
    one_line_4xx(public.post("/api/recordings", files=data), 403, "--api-key-file")
    closed = TestClient(create_app(open_service(bundle, store=tmp_path / "c")))  # no key: nothing to send
    for headers in ({}, {"X-API-Key": "anything"}):
        answer = closed.get("/api/species", headers=headers)
        one_line_4xx(answer, 403, "reads are open to this machine only; start the server with --public-reads or "
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
    recording, created = ingest(service.db, service.store, make_recording(6.0, seed=400), filename="m.wav",
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
    recordings = [ingest(service.db, service.store, make_recording(seconds, seed=800 + i), filename=f"{i}.flac")[0]
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


def test_two_scoring_processes_with_claims_handed_ahead_give_what_scoring_here_gives(bundle, tmp_path):
    """serve's scoring: 2 child processes, the worker handing them claims before it stores the last ones'."""
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection, Recording
    from echoengine.service.server import open_service

    options = DetectOptions(threshold=0.0, top_n=1)
    uploads = [make_recording(seconds, seed=1200 + i) for i, seconds in enumerate((3.0, 9.0, 5.0, 4.0, 12.0, 6.0))]
    found = {}
    for processes in (0, 2):
        service = open_service(bundle, store=tmp_path / f"store{processes}", options=options,
                               scoring_processes=processes)
        service.worker.claim = 2  # six uploads: three claims, up to three handed over at once
        ids = [ingest(service.db, service.store, audio, filename=f"{i}.flac")[0] for i, audio in enumerate(uploads)]
        service.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with service.db.session() as session:
                    if all(session.get(Recording, r).status == "done" for r in ids):
                        break
                time.sleep(0.2)
            with service.db.session() as session:
                assert [session.get(Recording, r).status for r in ids] == ["done"] * len(ids)
                found[processes] = [sorted((d.species, d.start, d.end, round(d.score, 4)) for d in
                                           session.query(Detection).filter_by(recording_id=r)) for r in ids]
            if processes:
                assert service.served.process.processes == 2 and service.served.process.depth == 3
        finally:
            service.stop()
    assert found[2] == found[0] and all(found[0])


def test_a_claim_scored_in_a_process_is_stored_together_and_its_bad_recording_fails_alone(bundle, tmp_path):
    """A scoring process's results of a claim are settled in one transaction: the recording whose audio is gone
    fails with its reason, the others are done with their detections."""
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection, Recording
    from echoengine.service.server import open_service

    service = open_service(bundle, store=tmp_path / "store", options=DetectOptions(threshold=0.0, top_n=1),
                           scoring_processes=1)
    service.worker.claim = 3
    ids = [ingest(service.db, service.store, make_recording(4.0, seed=1300 + i), filename=f"{i}.flac")[0]
           for i in range(3)]
    with service.db.session() as session:
        service.store.path(session.get(Recording, ids[1]).audio).unlink()
    service.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with service.db.session() as session:
                rows = [session.get(Recording, r) for r in ids]
                if all(row.status in ("done", "failed") for row in rows):
                    break
            time.sleep(0.2)
        with service.db.session() as session:
            rows = [session.get(Recording, r) for r in ids]
            assert [row.status for row in rows] == ["done", "failed", "done"]
            assert "file not found" in rows[1].error and rows[0].error is None
            assert all(row.model_id == service.served.row.id and row.finished_at for row in rows)
            counts = [session.query(Detection).filter_by(recording_id=r).count() for r in ids]
        assert counts[0] > 0 and counts[1] == 0 and counts[2] > 0
    finally:
        service.stop()


def test_a_recording_whose_detections_cannot_be_stored_fails_alone_in_its_claim(bundle, tmp_path):
    """A claim's results are stored together; one whose rows cannot be made, or that the database refuses, fails
    with its reason while the others of the claim are done with their detections."""
    from echoengine.detection import DetectOptions
    from echoengine.service.ingest import ingest
    from echoengine.service.schema import Detection, Recording
    from echoengine.service.server import open_service

    service = open_service(bundle, store=tmp_path / "store", options=DetectOptions(threshold=0.0, top_n=1))
    try:
        for i in range(4):
            ingest(service.db, service.store, make_recording(4.0, seed=1400 + i), filename=f"{i}.flac")
        claimed = service.worker._claim(4)
        scored = dict(service.served.events_of_many([service.store.path(name) for _, name in claimed]))
        results = [(recording_id, scored[index]) for index, (recording_id, _) in enumerate(claimed)]
        events, tops = results[2][1]
        results[1] = (results[1][0], (None, tops))  # its rows cannot be made
        results[2] = (results[2][0], (events, [[{"species": {"not JSON"}}]] * len(events)))  # refused by the database
        service.worker._settle_all(service.served, results)
        with service.db.session() as session:
            rows = [session.get(Recording, recording_id) for recording_id, _ in claimed]
            assert [row.status for row in rows] == ["done", "failed", "failed", "done"]
            assert rows[1].error.startswith("TypeError") and "could not be stored" in rows[2].error
            counts = [session.query(Detection).filter_by(recording_id=row.id).count() for row in rows]
        assert counts[0] > 0 and counts[1:3] == [0, 0] and counts[3] > 0
    finally:
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
    check.write_bytes(make_recording(6.0, seed=700))
    api.export(exported, check=[check])
    data = make_recording(12.0, seed=701)
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
    done, _ = ingest(service.db, service.store, make_recording(3.0, seed=500), filename="a.flac")
    gone, _ = ingest(service.db, service.store, make_recording(3.0, seed=501), filename="b.flac")
    stuck, _ = ingest(service.db, service.store, make_recording(3.0, seed=502), filename="c.flac")
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
    one_line_4xx(client.get(f"/api/detections/{detection['id']}/audio"), 410, "cannot be read")
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


def test_weights_only_the_scoring_process_reads_fail_the_start_in_one_line(bundle, tmp_path, capsys):
    """serve loads the model in its scoring process alone: a bundle it cannot load there is still one line."""
    from echoengine.cli import main

    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    (damaged / "weights.pt").write_bytes(b"not a state dict")
    argv = ["serve", str(damaged), "--store", str(tmp_path / "s"), "--port", str(free_port())]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "weights.pt" in error, error
    assert not (tmp_path / "s").exists()  # and leaves no store behind


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
    recording, _ = ingest(first.db, first.store, make_recording(3.0, seed=900), filename="a.flac")
    with first.db.transaction() as session:
        session.get(Recording, recording).status = "running"  # the first server scores it
    with pytest.raises(EchoError, match=f"^--store {store}: another server uses this store \\(process {os.getpid()}"):
        open_service(bundle, store=store)
    capsys.readouterr()  # what was logged so far
    assert main(["serve", str(bundle), "--store", str(store), "--port", str(free_port())]) == 2
    error = capsys.readouterr().err.strip()
    assert "another server uses this store" in error and "\n" not in error, error
    assert statuses(default_url(store)) == {recording: "running"}
    with socket.socket() as busy:  # the store is free once the first stops; a busy port is refused first
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        first.stop()
        port = busy.getsockname()[1]
        assert main(["serve", str(bundle), "--store", str(store), "--port", str(port)]) == 2
        error = capsys.readouterr().err.strip()
        assert f"--port {port}: 127.0.0.1:{port} is in use" in error and "\n" not in error, error
    assert statuses(default_url(store)) == {recording: "running"}  # nothing requeued it
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
                          "audio": base64.b64encode(make_recording(2.0, seed=910)).decode()})
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
