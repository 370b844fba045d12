"""Sensor messages (both kinds, every malformed case) and the MQTT bridge against a real mosquitto broker."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime

import numpy as np
import paho.mqtt.client as paho
import paho.mqtt.publish as publish
import pytest
import soundfile as sf
from paho.mqtt.enums import CallbackAPIVersion

from broker import Broker
from echoengine.errors import ConfigError, EchoError
from echoengine.service.messages import SCHEMA, AudioMessage, MessageError, parse_message
from echoengine.service.mqtt import MqttBridge, detection_json, parse_broker_url

MAY_1 = datetime(2024, 5, 1, 6, 30, tzinfo=UTC)


def _wav(seconds: float = 0.25, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


WAV = _wav()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _project_echo(**changes) -> dict:
    """A message as Project Echo's simulator publishes it (its comms manager's vocalisation event)."""
    message = {"timestamp": "2024-05-01T06:30:00", "sensorId": "otways-7", "microphoneLLA": [-38.78, 143.55, 95.0],
               "animalEstLLA": [-38.7801, 143.5502, 0.0], "animalTrueLLA": [-38.7802, 143.5503, 0.0],
               "animalLLAUncertainty": 50.0, "audioClip": _b64(WAV), "mode": "Animal_Mode",
               "audioFile": "tawny_frogmouth_03.wav"}
    return {key: value for key, value in {**message, **changes}.items() if value is not ...}


def _own(**changes) -> dict:
    message = {"schema": SCHEMA, "sensor_id": "pond-2", "recorded_at": "2024-05-01T08:30:00+02:00", "lat": 52.1,
               "lon": 0.12, "alt": 14.5, "audio": _b64(WAV)}
    return {key: value for key, value in {**message, **changes}.items() if value is not ...}


def _parse(document: dict, **options) -> AudioMessage:
    return parse_message(json.dumps(document).encode(), **options)


# Project Echo's message


def test_project_echo_message_as_its_simulator_sends_it():
    message = _parse(_project_echo())
    assert message.audio == WAV and sf.info(io.BytesIO(message.audio)).samplerate == 16000
    assert (message.sensor_id, message.recorded_at, message.kind) == ("otways-7", MAY_1, "projectecho")
    assert (message.lat, message.lon, message.alt) == (-38.78, 143.55, 95.0)
    assert message.filename == "tawny_frogmouth_03.wav"


@pytest.mark.parametrize("timestamp", [1714545000, 1714545000.0, "1714545000", "2024-05-01T06:30:00Z",
                                       "2024-05-01T16:30:00+10:00", "2024-05-01T06:30:00", "2024-05-01 06:30:00"])
def test_project_echo_timestamps_in_seconds_or_iso_8601_all_become_utc(timestamp):
    assert _parse(_project_echo(timestamp=timestamp)).recorded_at == MAY_1


def test_project_echo_coordinates_ids_and_modes_in_their_other_forms():
    message = _parse(_project_echo(microphoneLLA=[-38.78, 143.55], sensorId=123, audioFile="Recording_Mode"))
    assert (message.lat, message.lon, message.alt, message.sensor_id) == (-38.78, 143.55, None, "123")
    assert message.filename == "123_20240501T063000Z.wav"  # a mode is no file name: sensor and time
    backend_form = {"latitude": -38.78, "longitude": 143.55, "altitude": 10}
    assert _parse(_project_echo(microphoneLLA=backend_form)).alt == 10.0
    bare = _parse({"audioClip": _b64(WAV)})
    assert (bare.sensor_id, bare.recorded_at, bare.lat, bare.filename) == (None, None, None, "recording.wav")


def test_project_echo_clip_with_line_breaks_as_base64_encodebytes_writes_it():
    assert _parse(_project_echo(audioClip=base64.encodebytes(WAV).decode())).audio == WAV
    assert _parse(_own(audio=f"data:audio/wav;base64,{_b64(WAV)}")).audio == WAV  # as a browser's FileReader writes


def test_the_file_name_takes_the_extension_of_the_content_and_no_path():
    flac = io.BytesIO()
    sf.write(flac, np.zeros(1600, np.float32), 16000, format="FLAC")
    message = _parse(_project_echo(audioClip=_b64(flac.getvalue()), audioFile="../../etc/owl call.wav"))
    assert message.filename == "owl_call.flac"


# our own message


def test_own_message_with_inline_audio():
    message = _parse(_own())
    assert message.audio == WAV and message.kind == SCHEMA
    assert (message.sensor_id, message.recorded_at, message.lat, message.lon, message.alt) == (
        "pond-2", MAY_1, 52.1, 0.12, 14.5)
    assert message.filename == "pond-2_20240501T063000Z.wav"
    assert _parse(_own(alt=..., lat=..., lon=..., recorded_at=..., sensor_id=...)).lat is None


def test_own_message_reads_audio_url_only_under_the_allowed_folder(tmp_path):
    root = tmp_path / "incoming"
    (root / "site-1").mkdir(parents=True)
    (root / "site-1" / "dawn.wav").write_bytes(WAV)
    for url in (f"file://{root}/site-1/dawn.wav", str(root / "site-1" / "dawn.wav"), "site-1/dawn.wav",
                f"file://localhost{root}/site-1/dawn.wav", "site-1/../site-1/dawn.wav"):
        message = _parse(_own(audio=..., audio_url=url), audio_root=root)
        assert (message.audio, message.filename) == (WAV, "dawn.wav"), url


def test_audio_url_refusals(tmp_path):
    root, outside = tmp_path / "incoming", tmp_path / "secret.wav"
    root.mkdir()
    outside.write_bytes(WAV)
    (root / "link.wav").symlink_to(outside)
    os.mkfifo(root / "pipe.wav")  # would block a plain open()
    cases = {str(outside): (root, "outside the server's audio folder"),
             "../secret.wav": (root, "outside"), f"file://{outside}": (root, "outside"),
             "link.wav": (root, "outside"), "/etc/passwd": (root, "outside"),
             "pipe.wav": (root, "not a regular file"), "missing.wav": (root, "No such file"),
             f"file://otherhost{root}/a.wav": (root, "file:// URLs name no host"),
             "ftp://host/a.wav": (root, "unsupported 'audio_url' scheme 'ftp'"),
             "https://host/a.wav": (root, "over http\\(s\\) is not enabled"),
             "site/a.wav": (None, "this server allows no audio folder")}
    for url, (audio_root, reason) in cases.items():
        with pytest.raises(MessageError, match=reason):
            _parse(_own(audio=..., audio_url=url), audio_root=audio_root)


def test_http_audio_url_through_the_given_fetcher():
    fetched = []
    message = _parse(_own(audio=..., audio_url="https://files.example.org/a/dusk%20chorus.wav"),
                     fetch=lambda url: fetched.append(url) or WAV)
    assert (message.audio, message.filename) == (WAV, "dusk_chorus.wav")
    assert fetched == ["https://files.example.org/a/dusk%20chorus.wav"]

    def failing(url):
        raise TimeoutError("timed out\nafter 10 s")

    with pytest.raises(MessageError, match=r"cannot fetch 'audio_url' .*: timed out after 10 s$"):
        _parse(_own(audio=..., audio_url="http://files.example.org/a.wav"), fetch=failing)


MALFORMED = {
    "not JSON": (b"\xff\xfe{not json", "^not JSON: "),
    "deeply nested": (b"[" * 100_000, "^not JSON: "),
    "an array": (b"[1, 2]", "^expected a JSON object, got an array$"),
    "neither kind": ({"hello": 1}, "^unknown message: expected a 'schema' field .* \\(fields received: hello\\)$"),
    "newer schema": (_own(schema="echoengine.audio/2"), "^unsupported schema version 'echoengine.audio/2'"),
    "other schema": (_own(schema="birdnet/1"), "^unknown schema 'birdnet/1': expected 'echoengine.audio/1'$"),
    "own without audio": (_own(audio=...), "^missing audio: give 'audio' \\(base64\\) or 'audio_url'$"),
    "echo without audio": (_project_echo(audioClip=...), "^missing audio: no 'audioClip'"),
    "echo null audio": (_project_echo(audioClip=None), "^missing audio: no 'audioClip'"),
    "empty audio": (_own(audio=""), "^missing audio: 'audio' is empty$"),
    "bad base64": (_own(audio="UklGRi#$%"), "^bad base64 in 'audio': "),
    "truncated base64": (_project_echo(audioClip=_b64(WAV)[:-3]), "^bad base64 in 'audioClip': "),
    "non-ASCII base64": (_own(audio="UklGRé=="), "^bad base64 in 'audio': "),
    "audio not a string": (_own(audio=[1, 2]), "^bad base64 in 'audio': expected a string, got an array$"),
    "audio and url": (_own(audio_url="a.wav"), "^give either 'audio' or 'audio_url', not both$"),
    "url not a string": (_own(audio=..., audio_url=7), "^bad 'audio_url': expected a URL or a path"),
    "latitude over 90": (_own(lat=91.0), "^bad coordinates: lat 91.0 is outside \\[-90, 90\\]$"),
    "longitude alone": (_own(lat=...), "^bad coordinates: give both lat and lon, or neither$"),
    "latitude as text": (_own(lat="52.1"), "^bad coordinates: lat must be a finite number, got '52.1'$"),
    "latitude NaN": (_own(lat=float("nan")), "^bad coordinates: lat must be a finite number, got nan$"),
    "altitude true": (_own(alt=True), "^bad coordinates: alt must be a finite number"),
    "LLA as text": (_project_echo(microphoneLLA="here"), "^bad coordinates in 'microphoneLLA': expected"),
    "LLA too short": (_project_echo(microphoneLLA=[1.0]), "^bad coordinates in 'microphoneLLA': expected"),
    "LLA longitude": (_project_echo(microphoneLLA=[1.0, 200.0, 0.0]), "lon 200.0 is outside \\[-180, 180\\]$"),
    "words for a time": (_project_echo(timestamp="yesterday"), "^bad timestamp in 'timestamp': 'yesterday' is not"),
    "milliseconds": (_project_echo(timestamp=1714545000000), "^bad timestamp in 'timestamp': .*milliseconds"),
    "negative time": (_project_echo(timestamp=-5), "^bad timestamp in 'timestamp': -5 is not seconds"),
    "boolean time": (_project_echo(timestamp=True), "^bad timestamp in 'timestamp': expected seconds"),
    "own epoch time": (_own(recorded_at=1714545000), "^bad timestamp in 'recorded_at': expected an ISO 8601"),
    "own month 13": (_own(recorded_at="2024-13-01T00:00:00Z"), "^bad timestamp in 'recorded_at': '2024-13-01"),
    "year 1 east of UTC": (_own(recorded_at="0001-01-01T00:00:00+14:00"),
                           "^bad timestamp in 'recorded_at': '0001-01-01T00:00:00\\+14:00' is not a time a "
                           "recording was made \\(years 1900 to 2200\\)$"),
    "year 9999 west of UTC": (_project_echo(timestamp="9999-12-31T23:59:59-12:00"),
                              "^bad timestamp in 'timestamp': '9999-12-31T23:59:59-12:00' is not a time"),
    "sensor as object": (_own(sensor_id={"a": 1}), "^bad sensor id in 'sensor_id': expected a string, got an obj"),
    "sensor too long": (_project_echo(sensorId="x" * 300), "^bad sensor id in 'sensorId': expected up to 200"),
    "sensor with a newline": (_own(sensor_id="a\nb"), "^bad sensor id in 'sensor_id'"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_each_malformed_message_raises_message_error_with_a_one_line_reason(name):
    payload, reason = MALFORMED[name]
    with pytest.raises(MessageError, match=reason) as raised:
        parse_message(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    assert "\n" not in str(raised.value) and isinstance(raised.value, EchoError)


def test_size_limits_on_the_payload_and_on_audio_read_from_a_file(tmp_path):
    payload = json.dumps(_own()).encode()
    with pytest.raises(MessageError, match=f"^payload too large: {len(payload)} bytes, the limit is 1000$"):
        parse_message(payload, max_bytes=1000)
    (tmp_path / "long.wav").write_bytes(WAV)
    with pytest.raises(MessageError, match=f"^audio too large: {len(WAV)} bytes in 'audio_url', the limit is 1000$"):
        _parse(_own(audio=..., audio_url="long.wav"), audio_root=tmp_path, max_bytes=1000)


# the bridge without a broker


def test_broker_urls():
    address = parse_broker_url("mqtt://echo%40site:p%3Ass@broker.lan/echo/#")
    assert (address.host, address.port, address.topic, address.tls) == ("broker.lan", 1883, "echo/#", False)
    assert (address.username, address.password) == ("echo@site", "p:ss")
    assert "p:ss" not in repr(address) and "p%3Ass" not in repr(address)
    tls = parse_broker_url("mqtts://[::1]:8884/a/+/b")
    assert (tls.host, tls.port, tls.topic, tls.tls, tls.username) == ("::1", 8884, "a/+/b", True, None)
    for url, reason in {"http://host/t": "expected mqtt://", "mqtt://host": "names no topic",
                        "mqtt://u:secret@host:99999/t": "out of range", "mqtt:///t": "names no host",
                        "mqtt://host/a/#/b": "'#' may only be the whole last level",
                        "mqtt://u:secret@host/a+": "'\\+' may only be a whole level"}.items():
        with pytest.raises(ConfigError, match=reason) as raised:
            parse_broker_url(url)
        assert "secret" not in str(raised.value)
    with pytest.raises(ConfigError, match="takes no wildcards"):
        MqttBridge("mqtt://host/in", lambda message: 1, out_topic="out/#")


def test_handle_logs_and_skips_what_submit_refuses_and_goes_on(caplog):
    def submit(message):
        if message.sensor_id == "refused":
            raise EchoError("not an audio file")
        if message.sensor_id == "crash":
            raise RuntimeError("database is locked")
        return 7

    bridge = MqttBridge("mqtt://127.0.0.1:1/in", submit)
    with caplog.at_level(logging.INFO, logger="echoengine.service.mqtt"):
        results = [bridge.handle(json.dumps(_own(sensor_id=name)).encode(), topic="in")
                   for name in ("refused", "crash", "good")]
    assert results == [None, None, 7]
    assert bridge.counts == {"received": 3, "submitted": 1, "skipped": 0, "failed": 2, "published": 0}
    assert "from sensor refused not queued: not an audio file" in caplog.text
    assert "database is locked" in caplog.text  # with its traceback


def test_handle_says_when_the_audio_was_already_stored(caplog):
    stored = iter([(7, True), (7, False)])  # submit's (id, created): the same audio twice
    bridge = MqttBridge("mqtt://127.0.0.1:1/in", lambda message: next(stored))
    with caplog.at_level(logging.INFO, logger="echoengine.service.mqtt"):
        assert [bridge.handle(json.dumps(_own()).encode(), topic="in") for _ in range(2)] == [7, 7]
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].endswith("from sensor pond-2 queued as recording 7"), lines
    assert lines[1].endswith("from sensor pond-2 not queued: its audio is already stored as recording 7"), lines


def test_a_timestamp_past_the_calendar_is_skipped_with_its_reason_not_an_unexpected_error(caplog):
    bridge = MqttBridge("mqtt://127.0.0.1:1/in", Recorder())
    message = paho.MQTTMessage(topic=b"in")
    message.payload = json.dumps(_own(recorded_at="0001-01-01T00:00:00+14:00")).encode()
    with caplog.at_level(logging.INFO, logger="echoengine.service.mqtt"):
        bridge._on_message(bridge._client, None, message)  # as paho's network thread calls it
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == ("MQTT message on in skipped: bad timestamp in 'recorded_at': "
                                   "'0001-01-01T00:00:00+14:00' is not a time a recording was made "
                                   "(years 1900 to 2200)")
    assert bridge.counts["skipped"] == 1


def test_detection_json():
    detection = {"id": 42, "species": "owl", "start": datetime(2024, 5, 1, tzinfo=UTC), "score": np.float32(0.5),
                 "top": np.array([0.5, 0.25])}
    assert json.loads(detection_json(detection, "http://10.0.0.5:8000/")) == {
        "id": 42, "species": "owl", "start": "2024-05-01T00:00:00+00:00", "score": 0.5, "top": [0.5, 0.25],
        "link": "http://10.0.0.5:8000/api/detections/42"}
    with pytest.raises(ValueError, match="needs its 'id'"):
        detection_json({"species": "owl"})


# the bridge against a real broker


class Recorder:
    """A ``submit`` that records messages (and fails for the sensors named in ``fail``)."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.messages: list[AudioMessage] = []
        self.fail = fail
        self._changed = threading.Condition()

    def __call__(self, message: AudioMessage) -> int:
        if message.sensor_id in self.fail:
            raise RuntimeError(f"cannot store the recording of {message.sensor_id}")
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()
            return len(self.messages)

    def wait(self, count: int, timeout: float = 10.0) -> list[AudioMessage]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with Broker(tmp_path_factory.mktemp("mosquitto")) as running:
        yield running


@contextmanager
def _running(bridge: MqttBridge):
    bridge.start()
    try:
        assert bridge.wait_subscribed(10), "the bridge did not subscribe within 10 s"
        yield bridge
    finally:
        bridge.stop()


@contextmanager
def _subscriber(port: int, topic: str):
    """A plain paho client subscribed to ``topic``; yields the queue of messages it receives."""
    received: queue.Queue = queue.Queue()
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda client, userdata, flags, code, properties: client.subscribe(topic, qos=1)
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = lambda client, userdata, message: received.put(message)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        yield received
    finally:
        client.disconnect()
        client.loop_stop()


def _publish(port: int, *messages: tuple[str, object]) -> None:
    """Publish in order on one connection, QoS 1; dicts as JSON."""
    payloads = [(topic, body if isinstance(body, bytes) else json.dumps(body)) for topic, body in messages]
    publish.multiple([{"topic": t, "payload": p, "qos": 1} for t, p in payloads], hostname="127.0.0.1", port=port)


def test_bridge_skips_a_malformed_message_and_a_failed_submit_then_queues_both_kinds(broker, caplog):
    recorder = Recorder(fail=("broken",))
    bridge = MqttBridge(broker.url("echo/+/audio"), recorder)
    with caplog.at_level(logging.INFO, logger="echoengine.service.mqtt"), _running(bridge):
        _publish(broker.port, ("echo/s1/audio", b"{'audioClip': 'single quotes are not JSON'}"),
                 ("echo/s1/audio", _project_echo(sensorId="broken")), ("echo/s1/audio", _project_echo()),
                 ("echo/s1/other", _own(sensor_id="not-subscribed")), ("echo/s2/audio", _own()))
        messages = recorder.wait(2)
        assert bridge.connected
    assert [(m.kind, m.sensor_id, m.recorded_at, m.lat, m.lon, m.alt, m.audio == WAV) for m in messages] == [
        ("projectecho", "otways-7", MAY_1, -38.78, 143.55, 95.0, True),
        (SCHEMA, "pond-2", MAY_1, 52.1, 0.12, 14.5, True)]
    assert bridge.counts == {"received": 4, "submitted": 2, "skipped": 1, "failed": 1, "published": 0}
    assert "MQTT message on echo/s1/audio skipped: not JSON" in caplog.text
    assert "cannot store the recording of broken" in caplog.text


def test_publish_detection_reaches_a_subscriber_with_its_link(broker):
    bridge = MqttBridge(broker.url("echo/in"), Recorder(), out_topic="echo/detections",
                        api_base="http://127.0.0.1:8000")
    with _subscriber(broker.port, "echo/detections") as received, _running(bridge):
        assert bridge.publish_detection({"id": 42, "species": "Ninox boobook", "max_score": np.float32(0.75)})
        message = received.get(timeout=10)
    assert message.qos == 1
    assert json.loads(message.payload) == {"id": 42, "species": "Ninox boobook", "max_score": 0.75,
                                           "link": "http://127.0.0.1:8000/api/detections/42"}


def test_bridge_reconnects_and_subscribes_again_when_the_broker_restarts(tmp_path, caplog):
    recorder = Recorder()
    with Broker(tmp_path) as own_broker, caplog.at_level(logging.INFO, logger="echoengine.service.mqtt"):
        bridge = MqttBridge(own_broker.url("echo/#"), recorder)
        with _running(bridge):
            _publish(own_broker.port, ("echo/a", _own(sensor_id="before")))
            assert len(recorder.wait(1)) == 1
            own_broker.stop()
            deadline = time.monotonic() + 10
            while bridge.connected and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not bridge.connected
            own_broker.start()
            assert bridge.wait_subscribed(15), "no reconnection within 15 s"
            _publish(own_broker.port, ("echo/b", _own(sensor_id="after")))
            assert [m.sensor_id for m in recorder.wait(2)] == ["before", "after"]
    assert "lost the broker" in caplog.text


def test_a_fixed_client_id_gets_the_messages_sent_while_the_bridge_was_down(broker):
    recorder = Recorder()
    with _running(MqttBridge(broker.url("echo/persist/#"), recorder, client_id="echoengine-test-persist")):
        pass  # subscribed once: the broker now keeps a session for this id
    _publish(broker.port, ("echo/persist/a", _own(sensor_id="while-down")))
    assert recorder.messages == []
    with _running(MqttBridge(broker.url("echo/persist/#"), recorder, client_id="echoengine-test-persist")) as bridge:
        assert [m.sensor_id for m in recorder.wait(1)] == ["while-down"]
        assert bridge.persistent and bridge.client_id == "echoengine-test-persist"
    lost = Recorder()  # a random id asks for a clean session: nothing is kept for it
    with _running(MqttBridge(broker.url("echo/clean/#"), lost)) as bridge:
        assert not bridge.persistent and bridge.client_id.startswith("echoengine-")
    _publish(broker.port, ("echo/clean/a", _own(sensor_id="lost")))
    with _running(MqttBridge(broker.url("echo/clean/#"), lost)):
        assert lost.wait(1, timeout=1.0) == []


def test_credentials_in_the_url(tmp_path, caplog):
    with Broker(tmp_path, users={"sensor-hub": "p@ss:word"}) as own_broker:
        recorder = Recorder()
        with _running(MqttBridge(own_broker.url("in", user="sensor-hub:p%40ss%3Aword"), recorder)):
            publish.single("in", json.dumps(_own()), qos=1, hostname="127.0.0.1", port=own_broker.port,
                           auth={"username": "sensor-hub", "password": "p@ss:word"})
            assert len(recorder.wait(1)) == 1
        refused = MqttBridge(own_broker.url("in", user="sensor-hub:wrong"), recorder)
        with caplog.at_level(logging.WARNING, logger="echoengine.service.mqtt"):
            refused.start()
            try:
                deadline = time.monotonic() + 10
                while "refused the connection" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert not refused.connected
            finally:
                refused.stop()
    assert "refused the connection: Not authorized" in caplog.text
    assert "wrong" not in caplog.text


def test_the_bridge_imports_without_torch():
    """``echoengine[serve]`` runs without torch: the bridge and its messages must not pull it in."""
    code = "import sys, echoengine.service.mqtt; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
