"""``echoengine serve``: a bundle behind the HTTP API, with its database, audio store and worker.

:func:`open_service` puts the parts together (the store folder, the database
brought up to date by its migrations, the bundle loaded and registered as a
model, the worker); :func:`serve` runs them with uvicorn until interrupted.
A program that embeds the service (or the MQTT bridge) works on the
:class:`Service`: ``service.db`` and ``service.store`` for
:func:`echoengine.service.ingest.ingest`, ``service.worker.on_detection``
for the detections.

Examples
--------
>>> service = open_service("frogs-model", store="/srv/echo")  # doctest: +SKIP
>>> service.worker.on_detection(print)  # doctest: +SKIP
>>> serve("frogs-model", store="/srv/echo", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from echoengine.detection import DetectOptions
from echoengine.errors import EchoError
from echoengine.service.access import Access, read_api_key
from echoengine.service.db import Database, default_url
from echoengine.service.ingest import ingest
from echoengine.service.served import ServedModel, load_model
from echoengine.service.store import AudioStore
from echoengine.service.worker import Worker

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "Part", "Service", "mqtt_bridge", "open_service", "serve"]

logger = logging.getLogger("echoengine.service")
#: The largest upload by default: an hour of 48 kHz mono 16-bit WAV is 330 MB.
DEFAULT_MAX_UPLOAD_MB = 512.0


class Part(Protocol):
    """Something that runs with the service (the MQTT bridge): started after the worker, stopped before it."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Service:
    """The parts of a running service.

    Attributes
    ----------
    db : Database
        Tables and queue.
    store : AudioStore
        The recordings' audio, by content hash.
    served : ServedModel
        The bundle that scores, and its ``models`` row.
    worker : Worker
        Scores queued recordings; ``worker.on_detection(callback)`` to hear of detections.
    access : Access
        Who may read and write.
    max_upload_mb : float
        The largest upload accepted.
    base_url : str
        The server's address, for links in detections.
    parts : list of Part
        What runs with the service (:meth:`attach`).
    """

    db: Database
    store: AudioStore
    served: ServedModel
    worker: Worker
    access: Access
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    base_url: str = ""
    parts: list[Part] = field(default_factory=list)

    @property
    def version(self) -> str:
        """The served model as ``name/version``."""
        return f"{self.served.row.name}/{self.served.row.version}"

    def attach(self, part: Part) -> None:
        """Run ``part`` with the service: its ``start()`` after the worker's, its ``stop()`` before."""
        self.parts.append(part)

    def start(self) -> None:
        """Start the worker (after putting back what a killed server left running), then the attached parts."""
        self.worker.start()
        for part in self.parts:
            part.start()

    def stop(self) -> None:
        """Stop the attached parts (last first) and the worker, and close the database's connections."""
        for part in reversed(self.parts):
            part.stop()
        self.worker.stop()
        self.db.dispose()


def open_service(bundle: str | Path, *, store: str | Path, db: str | None = None,
                 options: DetectOptions | None = None, api_key_file: str | Path | None = None,
                 public_reads: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                 base_url: str = "", mqtt: str | None = None, mqtt_out: str | None = None) -> Service:
    """Open the store and database, load and register the bundle, and make the worker (not started).

    Parameters
    ----------
    bundle : path
        A bundle, or a cross-validation folder (its folds as an ensemble).
    store : path
        The folder for the audio (``store/audio/``) and the default SQLite database (``store/echo.db``).
    db : str, optional
        A SQLAlchemy URL (``postgresql+psycopg://user@host/dbname``); default SQLite in ``store``.
    options : DetectOptions, optional
        ``detect``'s windows, thresholds and species filters (default: ``detect``'s defaults).
    api_key_file : path, optional
        A file whose first line is the key writes need.
    public_reads : bool
        Reads open to every client, not only this machine's.
    max_upload_mb : float
        The largest upload (MB); larger ones get a 413 as soon as they pass the limit.
    base_url : str
        The server's address, for links in detections.
    mqtt : str, optional
        ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC``: sensor messages on
        TOPIC are queued as uploads are (:class:`~echoengine.service.mqtt.MqttBridge`).
    mqtt_out : str, optional
        The topic each stored detection is published to (JSON, with its link), through the same broker.

    Raises
    ------
    EchoError
        A bundle, database, key file or option that cannot be used (one line saying why).
    """
    if not max_upload_mb > 0:
        raise EchoError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if mqtt_out and not mqtt:
        raise EchoError("--mqtt-out publishes through the broker of --mqtt: give --mqtt too")
    access = Access(read_api_key(api_key_file) if api_key_file else None, public_reads)
    database = Database.connect(db or default_url(_folder(store)))
    database.migrate()
    served = load_model(database, bundle, options)
    audio = AudioStore(store, served.scorer.config.audio)
    audio.clear_incoming()
    worker = Worker(database, audio, served, base_url=base_url)
    logger.info("serving %s as model %s/%s (%d classes); database %s", bundle, served.row.name, served.row.version,
                len(served.classes), database.engine.url.render_as_string(hide_password=True))
    service = Service(database, audio, served, worker, access, max_upload_mb, base_url)
    if mqtt:
        service.attach(mqtt_bridge(service, mqtt, out_topic=mqtt_out))
    return service


def mqtt_bridge(service: Service, url: str, *, out_topic: str | None = None):
    """An MQTT bridge that queues sensor messages as :func:`ingest` does and publishes the worker's detections."""
    from echoengine.service.mqtt import MqttBridge

    def submit(message) -> int:
        return ingest(service.db, service.store, message.audio, filename=message.filename,
                      sensor_id=message.sensor_id, recorded_at=message.recorded_at, lat=message.lat, lon=message.lon,
                      alt=message.alt)[0]

    bridge = MqttBridge(url, submit, out_topic=out_topic, api_base=service.base_url)
    if out_topic:
        service.worker.on_detection(bridge.publish_detection)
    return bridge


def _folder(store: str | Path) -> Path:
    store = Path(store)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EchoError(f"--store {store}: cannot create it ({exc.strerror})") from None
    return store


def serve(bundle: str | Path, *, store: str | Path, db: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, options: DetectOptions | None = None, api_key_file: str | Path | None = None,
          public_reads: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, mqtt: str | None = None,
          mqtt_out: str | None = None, log_level: str = "info") -> None:
    """Serve ``bundle`` over HTTP at ``host:port`` until interrupted (see :func:`open_service` for the rest)."""
    import uvicorn

    from echoengine.service.app import create_app

    shown = f"[{host}]" if ":" in host else host
    service = open_service(bundle, store=store, db=db, options=options, api_key_file=api_key_file,
                           public_reads=public_reads, max_upload_mb=max_upload_mb, base_url=f"http://{shown}:{port}",
                           mqtt=mqtt, mqtt_out=mqtt_out)
    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
