"""The MQTT bridge of ``echoengine serve``: sensor messages in, detections out.

:class:`MqttBridge` subscribes to a topic of a broker (``mqtt://HOST:PORT/TOPIC``,
wildcards allowed), checks each message with
:func:`~echoengine.service.messages.parse_message` and hands each good one to
``submit``, the service's queue, which returns the recording's id. A
malformed message, or one that ``submit`` refuses, is logged and skipped: the
bridge never stops on one. It reconnects (and subscribes again) whenever the
broker comes back, and :meth:`MqttBridge.publish_detection` publishes each
detection as JSON, with a link into the HTTP API, to an output topic (QoS 1,
queued while the broker is away).

The bridge knows nothing of the database or the worker: the service passes a
function in and calls one method out.

Examples
--------
>>> address = parse_broker_url("mqtt://sensors:s3cret@broker.lan:1884/echo/+/audio")
>>> address.host, address.port, address.topic, address.username, address.tls
('broker.lan', 1884, 'echo/+/audio', 'sensors', False)
>>> address
BrokerAddress(url='mqtt://sensors@broker.lan:1884/echo/+/audio')
>>> received = []
>>> bridge = MqttBridge("mqtt://127.0.0.1:1883/echo/#", received.append, out_topic="echo/detections")
>>> bridge.handle(b"not json", topic="echo/pond")  # logged and skipped: None
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePath
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from echoengine.errors import ConfigError, EchoError
from echoengine.service.messages import MAX_MESSAGE_BYTES, AudioMessage, MessageError, parse_message

__all__ = ["BrokerAddress", "MqttBridge", "parse_broker_url"]

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
_RECONNECT_DELAY = (1, 30)  # seconds: the first retry, and the most between retries as they double
_MAX_QUEUED = 10_000  # detections kept for the broker while it is away


@dataclass(frozen=True)
class BrokerAddress:
    """Where the bridge connects and what it subscribes to, from a ``mqtt://`` URL.

    ``repr`` and :attr:`url` never show the password.
    """

    host: str = field(repr=False)
    port: int = field(repr=False)
    topic: str = field(repr=False)
    tls: bool = field(default=False, repr=False)
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    url: str = ""


def parse_broker_url(url: str) -> BrokerAddress:
    """Read ``mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC``.

    Parameters
    ----------
    url : str
        ``mqtt://`` (port 1883 by default) or ``mqtts://`` (TLS, port 8883).
        The topic is everything after the first ``/`` past the host, and may
        hold the wildcards ``+`` and ``#`` (no need to escape them). User and
        password are percent-decoded.

    Returns
    -------
    BrokerAddress

    Raises
    ------
    ConfigError
        Another scheme, no host, a bad port, no topic, or a wildcard misplaced.

    Examples
    --------
    >>> parse_broker_url("mqtts://broker.example.org/sensors/#").port
    8883
    >>> parse_broker_url("mqtt://localhost:1883")
    Traceback (most recent call last):
    ...
    echoengine.errors.ConfigError: MQTT URL 'mqtt://localhost:1883' names no topic: expected mqtt://HOST:PORT/TOPIC
    """
    scheme, separator, rest = url.partition("://")
    scheme, safe = scheme.lower(), _redacted(url)  # never show a password
    if not separator or scheme not in _DEFAULT_PORTS:
        raise ConfigError(f"MQTT URL {safe!r}: expected mqtt://HOST:PORT/TOPIC (or mqtts:// for TLS)")
    netloc, _, topic = rest.partition("/")
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError as error:
        raise ConfigError(f"MQTT URL {safe!r}: {error}") from None
    if not parts.hostname:
        raise ConfigError(f"MQTT URL {safe!r} names no host: expected mqtt://HOST:PORT/TOPIC")
    if not topic:
        raise ConfigError(f"MQTT URL {safe!r} names no topic: expected mqtt://HOST:PORT/TOPIC")
    check_topic(topic, wildcards=True)
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    shown = f"{scheme}://{username + '@' if username else ''}{netloc.rpartition('@')[2]}/{topic}"
    return BrokerAddress(parts.hostname, port, topic, scheme in ("mqtts", "ssl"), username, password, shown)


def check_topic(topic: str, *, wildcards: bool) -> str:
    """Return ``topic`` if it is a valid MQTT topic (a filter when ``wildcards``), else raise ConfigError.

    Examples
    --------
    >>> check_topic("echo/+/audio", wildcards=True)
    'echo/+/audio'
    >>> check_topic("echo/#/audio", wildcards=True)
    Traceback (most recent call last):
    ...
    echoengine.errors.ConfigError: MQTT topic 'echo/#/audio': '#' may only be the whole last level
    """
    if not topic or "\0" in topic or len(topic.encode()) > 65535:
        raise ConfigError(f"MQTT topic {topic!r}: expected 1 to 65535 bytes of UTF-8, without NUL")
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and not wildcards:
            raise ConfigError(f"MQTT topic {topic!r}: a topic to publish to takes no wildcards (+, #)")
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(f"MQTT topic {topic!r}: '#' may only be the whole last level")
        if "+" in level and level != "+":
            raise ConfigError(f"MQTT topic {topic!r}: '+' may only be a whole level")
    return topic


class MqttBridge:
    """Feed sensor messages from an MQTT topic to the service's queue, and publish its detections.

    Parameters
    ----------
    url : str
        ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC`` (see :func:`parse_broker_url`).
    submit : callable
        ``submit(message: AudioMessage) -> int``: queues the recording and
        returns its id, or ``(id, created)`` where ``created`` False says the
        same audio was stored before (nothing new queued; logged as such).
        Called on the bridge's network thread, once per good
        message, before the message is acknowledged: keep it quick (store and
        enqueue, never score). Whatever it raises is logged and the message skipped.
    out_topic : str, optional
        Where :meth:`publish_detection` publishes; without one it does nothing.
    api_base : str
        The HTTP API's address as clients reach it, e.g. ``"http://10.0.0.5:8000"``;
        each published detection links to ``{api_base}/api/detections/{id}``.
    log : logging.Logger
        Where skipped messages, connections and losses are reported.
    audio_root, fetch, max_bytes
        Passed to :func:`~echoengine.service.messages.parse_message`: the folder
        a local ``audio_url`` may point into, the fetcher of ``http(s)``
        ``audio_url`` values, and the largest message and audio accepted.
    client_id : str, optional
        A fixed MQTT client id asks the broker for a persistent session: it keeps
        the subscription, and the QoS 1 messages that arrive while the bridge is
        down, until the bridge connects again with this id (across broker
        restarts only if the broker persists them). Two bridges must not share
        one: the broker drops the older connection. By default a random id and
        a clean session.

    Examples
    --------
    >>> bridge = MqttBridge("mqtt://127.0.0.1:1883/echo/#", lambda message: 1, out_topic="echo/detections",
    ...                     api_base="http://127.0.0.1:8000/")
    >>> bridge.address.topic, bridge.out_topic, bridge.api_base
    ('echo/#', 'echo/detections', 'http://127.0.0.1:8000')
    """

    def __init__(self, url: str, submit: Callable[[AudioMessage], int], *, out_topic: str | None = None,
                 api_base: str = "", log: logging.Logger = logger, audio_root: str | Path | None = None,
                 fetch: Callable[[str], bytes] | None = None, max_bytes: int = MAX_MESSAGE_BYTES,
                 client_id: str | None = None) -> None:
        self.address = parse_broker_url(url)
        self.client_id = client_id or f"echoengine-{uuid.uuid4().hex[:12]}"
        self.persistent = client_id is not None
        self.out_topic = check_topic(out_topic, wildcards=False) if out_topic is not None else None
        self.api_base = api_base.rstrip("/")
        self.counts = {"received": 0, "submitted": 0, "skipped": 0, "failed": 0, "published": 0}
        self._submit, self._log = submit, log
        self._parse_options = {"fetch": fetch, "audio_root": audio_root, "max_bytes": max_bytes}
        self._subscribed = threading.Event()
        self._pending: list[paho.MQTTMessageInfo] = []
        self._pending_lock = threading.Lock()
        self._running = False
        self._unreachable_reported = False
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=not self.persistent)
        if self.address.username is not None:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            client.tls_set()
        client.reconnect_delay_set(*_RECONNECT_DELAY)
        client.max_queued_messages_set(_MAX_QUEUED)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background (paho's network thread) and keep connecting until :meth:`stop`.

        Returns at once, even when the broker cannot be reached yet; see
        :meth:`wait_subscribed`.
        """
        if self._running:
            return
        self._running = True
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()
        self._log.info("MQTT bridge: connecting to %s", self.address.url)

    def stop(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` seconds for detections not yet acknowledged, then disconnect.

        Calling it again, or before :meth:`start`, does nothing.
        """
        if not self._running:
            return
        deadline = time.monotonic() + timeout
        while self._unpublished() and self._subscribed.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._running = False
        self._client.disconnect()
        self._client.loop_stop()
        self._subscribed.clear()

    def __enter__(self) -> MqttBridge:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the broker confirms the subscription (again, after a reconnection); False on timeout."""
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        """True while connected to the broker and subscribed."""
        return self._subscribed.is_set()

    def handle(self, payload: bytes, *, topic: str = "") -> int | None:
        """Parse one message and submit it; log and skip it when malformed or refused.

        What the network thread calls for every message; public so that the
        service (or a test) can feed a message without a broker.

        Returns
        -------
        int or None
            The recording id ``submit`` returned, or None when skipped.
        """
        self.counts["received"] += 1
        where = f" on {topic}" if topic else ""
        try:
            message = parse_message(payload, **self._parse_options)
        except MessageError as error:
            self.counts["skipped"] += 1
            self._log.warning("MQTT message%s skipped: %s", where, error)
            return None
        try:
            recording = self._submit(message)
            recording, created = recording if isinstance(recording, tuple) else (recording, True)
        except EchoError as error:  # the service refused it: undecodable audio, a full queue...
            self.counts["failed"] += 1
            self._log.warning("MQTT message%s from sensor %s not queued: %s", where, message.sensor_id, error)
            return None
        except Exception:  # a bug or a failing store: report it in full, and keep the bridge running
            self.counts["failed"] += 1
            self._log.exception("MQTT message%s from sensor %s not queued", where, message.sensor_id)
            return None
        self.counts["submitted"] += 1
        self._log.info("MQTT message%s from sensor %s %s as recording %s", where, message.sensor_id,
                       "queued" if created else "not queued: its audio is already stored", recording)
        return recording

    def publish_detection(self, detection: dict) -> int | None:
        """Publish one detection as JSON to ``out_topic`` (QoS 1), with ``"link"`` to it in the HTTP API.

        Safe to call from any thread; while the broker is away the message is
        queued and sent when the bridge reconnects.

        Parameters
        ----------
        detection : dict
            The detection as the API shows it; must hold ``"id"``. Datetimes
            become ISO 8601 strings and numpy numbers plain numbers.

        Returns
        -------
        int or None
            The MQTT message id, or None when the bridge has no ``out_topic``
            or the queue for the broker is full (logged).

        Raises
        ------
        ValueError
            The detection has no ``"id"``; TypeError: a value JSON cannot hold.

        Examples
        --------
        >>> bridge = MqttBridge("mqtt://127.0.0.1:1883/in", lambda message: 1, api_base="http://h:8000")
        >>> bridge.publish_detection({"id": 7, "species": "owl"}) is None  # no out_topic: nothing to do
        True
        >>> detection_json({"id": 7, "species": "owl"}, "http://h:8000")
        '{"id": 7, "species": "owl", "link": "http://h:8000/api/detections/7"}'
        """
        if self.out_topic is None:
            return None
        info = self._client.publish(self.out_topic, detection_json(detection, self.api_base), qos=1)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._log.warning("MQTT detection %s not published: %d detections already wait for the broker",
                              detection["id"], _MAX_QUEUED)
            return None
        with self._pending_lock:
            self._pending = [*(p for p in self._pending if not p.is_published()), info]
            self.counts["published"] += 1
        return info.mid

    def _unpublished(self) -> bool:
        with self._pending_lock:
            return any(not p.is_published() for p in self._pending)

    # paho's callbacks, on its network thread

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, reason_code: object,
                    properties: object) -> None:
        if reason_code.is_failure:
            self._log.warning("MQTT broker %s refused the connection: %s", self.address.url, reason_code)
            return
        self._unreachable_reported = False
        self._log.info("MQTT bridge: connected to %s, subscribing to %s", self.address.url, self.address.topic)
        client.subscribe(self.address.topic, qos=1)

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        if not self._unreachable_reported:  # once per outage, not once per retry
            self._unreachable_reported = True
            self._log.warning("MQTT broker %s cannot be reached; retrying every %d s at most",
                              self.address.url, _RECONNECT_DELAY[1])

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason_code: object,
                       properties: object) -> None:
        self._subscribed.clear()
        if self._running:
            self._log.warning("MQTT bridge lost the broker %s (%s); reconnecting", self.address.url, reason_code)

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, reason_codes: list,
                      properties: object) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            self._log.error("MQTT broker %s refused the subscription to %s: %s", self.address.url,
                            self.address.topic, refused[0])
        else:
            self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        try:
            self.handle(message.payload, topic=message.topic)
        except Exception as error:  # never let an exception reach paho: it would end the network thread
            self._log.exception("MQTT message on %s: unexpected error (%s: %s)", message.topic,
                                type(error).__name__, " ".join(str(error).split()))


def detection_json(detection: dict, api_base: str = "") -> str:
    """A detection as the JSON :meth:`MqttBridge.publish_detection` publishes: its fields and ``"link"``.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> detection_json({"id": 3, "start": datetime(2024, 5, 1, tzinfo=timezone.utc)})
    '{"id": 3, "start": "2024-05-01T00:00:00+00:00", "link": "/api/detections/3"}'
    """
    if "id" not in detection:
        raise ValueError(f"a detection to publish needs its 'id'; got the fields {sorted(detection)}")
    body = {**detection, "link": f"{api_base.rstrip('/')}/api/detections/{detection['id']}"}
    return json.dumps(body, default=_json_value)


def _json_value(value: object) -> object:
    """JSON for what ``json`` does not know: times, paths, numpy numbers and arrays."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays, without importing numpy
        return value.tolist()
    raise TypeError(f"cannot publish a {type(value).__name__} as JSON")


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, slash, topic = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    return f"{scheme}://{user.partition(':')[0]}{at}{host}{slash}{topic}"
