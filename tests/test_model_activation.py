"""A store's active model: a candidate served beside it, promoted through the API (key required), new uploads
scored by it, old detections keeping theirs, and the choice kept across restarts (service/activation.py,
service/model_routes.py, ``serve --candidate`` / ``--activate``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reviewkit import KEY, open_reviewable, upload_and_score
from servers import Server
from servicekit import SCORING, changed_weights, make_recording, one_line_4xx, small_bundle


@pytest.fixture(scope="module")
def bundle(synthetic_dataset, tmp_path_factory) -> Path:
    return small_bundle(synthetic_dataset, tmp_path_factory)


@pytest.fixture(scope="module")
def retrained(bundle, tmp_path_factory) -> Path:
    return changed_weights(bundle, tmp_path_factory.mktemp("retrained"))


def _served_store(bundle: Path, store: Path) -> None:
    """A store where ``bundle`` was served (it is active) and scored one recording."""
    service, client = open_reviewable(bundle, store)
    try:
        upload_and_score(service, client, [(make_recording(6.0, seed=50), "2024-06-01T05:00:00Z")])
    finally:
        service.stop()


def _upload(server: Server, seed: int) -> int:
    answer = server.client.post("/api/recordings", files={"file": ("r.flac", make_recording(6.0, seed=seed))},
                                headers={"X-API-Key": KEY})
    assert answer.status_code == 202, answer.text
    (done,) = server.wait_for([answer.json()["id"]])
    assert done["status"] == "done", done
    return done["id"]


def _versions(server: Server) -> dict[int, set[str]]:
    """The model versions of each recording's detections."""
    found: dict[int, set[str]] = {}
    for detection in server.client.get("/api/detections", params={"limit": 1000}).json()["items"]:
        found.setdefault(detection["recording_id"], set()).add(detection["model_version"])
    return found


def test_a_candidate_is_promoted_with_the_key_and_stays_active_after_a_restart(bundle, retrained, tmp_path):
    store, key = tmp_path / "store", tmp_path / "key"
    key.write_text(KEY + "\n")
    _served_store(bundle, store)
    options = (*SCORING, "--api-key-file", str(key))
    server = Server(retrained, store, options=(*options, "--candidate")).wait_ready()
    try:
        models = {m["version"]: m for m in server.client.get("/api/models").json()}
        assert {v: m["serving"] for v, m in models.items()} == {1: True, 2: False}
        assert models[1]["activated_at"] is not None and models[2]["activated_at"] is None  # 2: a candidate
        assert server.client.get("/healthz").json()["model"] == "bundle/1"
        second = _upload(server, seed=51)  # the candidate does not score
        candidate = models[2]["id"]
        one_line_4xx(server.client.post(f"/api/models/{candidate}/activate"), 401, "X-API-Key")
        one_line_4xx(server.client.post(f"/api/models/{candidate}/activate", headers={"X-API-Key": "wrong-key-1"}),
                     401, "wrong API key")
        one_line_4xx(server.client.post("/api/models/999/activate", headers={"X-API-Key": KEY}), 404, "no model")
        one_line_4xx(server.client.post("/api/models/0/activate", headers={"X-API-Key": KEY}), 422, "model_id")
        answer = server.client.post(f"/api/models/{candidate}/activate", headers={"X-API-Key": KEY})
        assert answer.status_code == 200, answer.text
        promoted = answer.json()
        assert promoted["version"] == 2 and promoted["serving"] and promoted["previous"]["version"] == 1
        assert server.client.get("/healthz").json()["model"] == "bundle/2"
        third = _upload(server, seed=52)
        assert {m["version"]: m["serving"] for m in server.client.get("/api/models").json()} == {1: False, 2: True}
        again = server.client.post(f"/api/models/{candidate}/activate", headers={"X-API-Key": KEY})
        assert again.status_code == 200 and again.json()["previous"]["version"] == 2  # nothing to change
        versions = _versions(server)
        assert versions[1] == versions[second] == {"bundle/1"} and versions[third] == {"bundle/2"}
    finally:
        server.stop()
    restarted = Server(bundle, store, options=options).wait_ready()  # the first server's own command line
    try:
        assert restarted.client.get("/healthz").json()["model"] == "bundle/2"
        fourth = _upload(restarted, seed=53)
        assert _versions(restarted)[fourth] == {"bundle/2"} and _versions(restarted)[1] == {"bundle/1"}
    finally:
        restarted.stop()


def test_which_model_a_store_serves_at_start(bundle, retrained, tmp_path):
    """In-process: the rules of echoengine.service.activation, one start each."""
    from echoengine.detection import DetectOptions
    from echoengine.errors import EchoError
    from echoengine.service.server import open_service

    def serving(path: Path, **flags) -> str:
        service = open_service(path, store=tmp_path / "store", options=DetectOptions(threshold=0.0), **flags)
        service.stop()
        return service.version

    with pytest.raises(EchoError, match="no active model to serve beside the candidate"):
        serving(retrained, candidate=True)
    assert serving(bundle) == "bundle/1"
    assert serving(retrained, candidate=True) == "bundle/1"  # registered as bundle/2, not active
    assert serving(bundle) == "bundle/1"
    assert serving(retrained) == "bundle/2"  # served without --candidate after the active one was chosen
    assert serving(bundle) == "bundle/2"  # the older command line does not undo a later choice
    assert serving(bundle, activate=True) == "bundle/1"


def test_activating_a_model_whose_bundle_changed_or_is_gone_is_a_409(bundle, retrained, tmp_path):
    import shutil

    from echoengine.service.schema import Detection

    moved = tmp_path / "moved"
    candidate = changed_weights(retrained, moved)
    service, client = open_reviewable(bundle, tmp_path / "store")
    try:
        from echoengine.service.activation import open_served

        open_served(service.db, candidate, service.served.options, candidate=True)
        models = {m["version"]: m["id"] for m in client.get("/api/models").json()}
        shutil.copy(bundle / "weights.pt", candidate / "weights.pt")  # retrained in place since it was registered
        one_line_4xx(client.post(f"/api/models/{models[2]}/activate"), 409, "has changed since it was registered")
        shutil.rmtree(candidate)
        one_line_4xx(client.post(f"/api/models/{models[2]}/activate"), 409, "cannot be loaded")
        assert client.get("/healthz").json()["model"] == "bundle/1"
        upload_and_score(service, client, [(make_recording(6.0, seed=60), "2024-06-02T05:00:00Z")])
        with service.db.session() as session:
            assert {d.model_id for d in session.query(Detection)} == {models[1]}
    finally:
        service.stop()


def test_a_store_of_an_earlier_schema_is_upgraded_and_its_next_bundle_becomes_active(bundle, tmp_path):
    """Revision 0003 adds models.activated_at to a database made by 0001; rows kept, none active until a serve."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from echoengine.detection import DetectOptions
    from echoengine.service.activation import active_model
    from echoengine.service.db import _MIGRATIONS, Database, default_url
    from echoengine.service.server import open_service

    store = tmp_path / "store"
    store.mkdir()
    db = Database.connect(default_url(store))
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text("INSERT INTO models (name, version, weights_hash, fingerprint, classes, thresholds, "
                                "options, path, created_at) VALUES ('old', 1, 'h', 'f', '[]', '[]', '{}', '/gone', "
                                "'2024-01-01 00:00:00')"))
    assert db.migrate() == "0004" and active_model(db) is None
    db.dispose()
    service = open_service(bundle, store=store, options=DetectOptions(threshold=0.0))
    service.stop()
    db = Database.connect(default_url(store))
    assert active_model(db).name == "bundle" and service.version == "bundle/1"
    db.dispose()


def _detections_of(server: Server, recording: int) -> list[dict]:
    items = server.client.get("/api/detections", params={"limit": 1000}).json()["items"]
    return [d for d in items if d["recording_id"] == recording]


def _covering(server: Server, recording: int, second: float) -> list[dict]:
    """The detections of a recording whose span holds ``second``."""
    return [d for d in _detections_of(server, recording) if d["start"] <= second <= d["end"]]


def test_a_promoted_candidate_scores_as_the_server_did_unless_its_command_line_said_otherwise(bundle, retrained,
                                                                                            tmp_path):
    """``serve NEW --candidate`` with no scoring options takes the active model's (threshold 0, top-n 2), so the
    promotion keeps them; one given on the candidate's command line (--threshold 0.3) is kept, and the promotion
    says what changes."""
    store, key = tmp_path / "store", tmp_path / "key"
    key.write_text(KEY + "\n")
    _served_store(bundle, store)  # bundle/1: threshold 0, top-n 2 (SCORING)
    third = changed_weights(retrained, tmp_path / "third")
    write = {"X-API-Key": KEY}
    quick = ("--api-key-file", str(key), "--scoring-processes", "1")
    server = Server(retrained, store, options=(*quick, "--candidate")).wait_ready()
    try:
        models = {m["version"]: m for m in server.client.get("/api/models").json()}
        assert models[2]["options"]["threshold"] == 0.0 and models[2]["options"]["top_n"] == 2
        answer = server.client.post(f"/api/models/{models[2]['id']}/activate", headers=write)
        assert answer.status_code == 200 and answer.json()["changed_options"] == {}, answer.text
        recording = _upload(server, seed=70)
        assert {d["model_version"] for d in _covering(server, recording, 2.5)} == {"bundle/2"}
        assert len(_covering(server, recording, 2.5)) == 2  # the first window's two best classes: threshold 0
    finally:
        server.stop()
    server = Server(third, store, options=(*quick, "--candidate", "--threshold", "0.3")).wait_ready()
    try:
        candidate = next(m for m in server.client.get("/api/models").json() if m["version"] == 3)
        assert candidate["options"]["threshold"] == 0.3 and candidate["options"]["top_n"] == 2
        answer = server.client.post(f"/api/models/{candidate['id']}/activate", headers=write)
        assert answer.status_code == 200, answer.text
        assert answer.json()["changed_options"] == {"threshold": {"before": 0.0, "after": 0.3}}
        recording = _upload(server, seed=71)
        assert all(d["score"] >= 0.3 and d["model_version"] == "bundle/3" for d in _detections_of(server, recording))
        assert len(_covering(server, recording, 2.5)) <= 2
    finally:
        server.stop()
    assert "scores new uploads with other options than bundle/2 did: threshold 0.0 -> 0.3" in server.output()


def test_serve_activate_takes_the_options_it_is_not_given_from_the_active_model(bundle, retrained, tmp_path,
                                                                               caplog):
    """In-process: ``given`` names the options of the command line; a library call without it gives them all."""
    import logging

    from echoengine.detection import DetectOptions
    from echoengine.service.server import open_service

    store = tmp_path / "store"
    open_service(bundle, store=store, options=DetectOptions(threshold=0.0, top_n=2)).stop()
    second = open_service(retrained, store=store, options=DetectOptions(top_n=1), activate=True, given=["top_n"])
    second.stop()
    assert (second.served.options.threshold, second.served.options.top_n) == (0.0, 1)
    assert second.served.row.options["threshold"] == 0.0 and second.version == "bundle/2"
    with caplog.at_level(logging.WARNING, logger="echoengine.service"):
        third = open_service(bundle, store=store, options=DetectOptions(), activate=True)
        third.stop()
    assert (third.served.options.threshold, third.served.options.top_n) == (None, 0)
    assert "other options than bundle/2 did: threshold 0.0 -> None; top_n 1 -> 0" in caplog.text
