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

import contextlib
import errno
import logging
import re
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from echoengine.api import read_bundles
from echoengine.detection import DetectOptions
from echoengine.errors import EchoError
from echoengine.service.access import Access, read_api_key
from echoengine.service.activation import open_served
from echoengine.service.db import DB_FILE, Database, default_url
from echoengine.service.ingest import ingest
from echoengine.service.lock import LOCK_FILE, StoreLock, lock_store
from echoengine.service.scorer_process import ScorerProcess, default_processes
from echoengine.service.served import ServedModel
from echoengine.service.store import AudioStore
from echoengine.service.worker import Worker

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "Part", "Service", "mqtt_bridge", "mqtt_client_id", "open_service", "serve"]

logger = logging.getLogger("echoengine.service")
#: The largest upload by default: an hour of 48 kHz mono 16-bit WAV is 330 MB.
DEFAULT_MAX_UPLOAD_MB = 512.0
#: The file in the store that keeps its MQTT client id (:func:`mqtt_client_id`).
MQTT_CLIENT_ID_FILE = "mqtt-client-id"
_CLIENT_ID = re.compile(r"echoengine-[0-9a-f]{12}")


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
    lock : StoreLock, optional
        The store's lock, released by :meth:`stop`.
    """

    db: Database
    store: AudioStore
    served: ServedModel
    worker: Worker
    access: Access
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    base_url: str = ""
    parts: list[Part] = field(default_factory=list)
    lock: StoreLock | None = None

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
        """Stop the attached parts (last first) and the worker, close the database, and let the store go."""
        for part in reversed(self.parts):
            part.stop()
        self.worker.stop()
        if self.served.process is not None:
            self.served.process.stop()
            self.served.process = None
        self.db.dispose()
        if self.lock is not None:
            self.lock.release()


def open_service(bundle: str | Path, *, store: str | Path, db: str | None = None,
                 options: DetectOptions | None = None, api_key_file: str | Path | None = None,
                 public_reads: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                 base_url: str = "", mqtt: str | None = None, mqtt_out: str | None = None,
                 scoring_processes: int = 0, candidate: bool = False, activate: bool = False,
                 given: Collection[str] | None = None) -> Service:
    """Lock the store, open its database, load and register the bundle, and make the worker (not started).

    Options, MQTT address and bundle are checked before the store folder is made (a failed start removes what
    it made); the store's lock is taken before the database opens and held until :meth:`Service.stop`. A bundle,
    database, key file or option that cannot be used, or a store another server uses, is an EchoError (one line).

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
    api_key_file, public_reads : path, bool
        A file whose first line is the key writes need; reads open to every client, not only this machine's.
    max_upload_mb, base_url : float, str
        The largest upload (MB; larger ones get a 413 at once); the server's address, for links.
    mqtt, mqtt_out : str, optional
        ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC``: sensor messages on TOPIC are queued as uploads are
        (:class:`~echoengine.service.mqtt.MqttBridge`, a persistent session); the topic each stored detection
        is published to (JSON, with its link), through the same broker.
    scoring_processes : int
        Score in this many processes of their own (``serve``: 2 on 2+ cores), the model loaded there only; 0 here.
    candidate, activate : bool
        Register ``bundle`` without making it the store's active model, or make it active whatever the store's
        active model is; by default the rules of :mod:`echoengine.service.activation`.
    given : collection of str, optional
        The scoring options of ``options`` the user gave (``serve``'s command line); with ``candidate`` or
        ``activate``, the others are the store's active model's. None: all of them.
    """
    _check_options(max_upload_mb, mqtt, mqtt_out)
    access = Access(read_api_key(api_key_file) if api_key_file else None, public_reads)
    read_bundles(bundle)  # a path that holds no bundle is refused before the store is made
    folder, made = _folder(store)
    lock = lock_store(folder)
    try:
        client_id = mqtt_client_id(folder) if mqtt else None
        database, served, audio = _open_store(folder, db, bundle, options, scoring_processes,
                                              {"candidate": candidate, "activate": activate, "given": given})
    except BaseException:
        lock.release()
        if made:
            _remove_new_store(folder)
        raise
    worker = Worker(database, audio, served, base_url=base_url)
    logger.info("serving %s as model %s/%s (%d classes); database %s", served.row.path, served.row.name,
                served.row.version, len(served.classes), database.engine.url.render_as_string(hide_password=True))
    service = Service(database, audio, served, worker, access, max_upload_mb, base_url, lock=lock)
    if mqtt:
        service.attach(mqtt_bridge(service, mqtt, out_topic=mqtt_out, client_id=client_id))
    return service


def _open_store(folder: Path, db: str | None, bundle: str | Path, options: DetectOptions | None,
                scoring_processes: int, activation: dict) -> tuple[Database, ServedModel, AudioStore]:
    """The database brought up to date, the bundle registered in it, the store's active model loaded (here or in
    scoring processes), and the audio store."""
    database = Database.connect(db or default_url(folder))
    try:
        database.migrate()
        served = open_served(database, bundle, options or DetectOptions(), model_here=not scoring_processes,
                             **activation)
        if scoring_processes:  # the HTTP side keeps this process (and its GIL) to itself
            served.process = ScorerProcess(served.row.path, served.options, served.thresholds, scoring_processes)
        audio = AudioStore(folder, served.scorer.config.audio)
        audio.clear_incoming()
    except BaseException:
        database.dispose()
        raise
    return database, served, audio


def _check_options(max_upload_mb: float, mqtt: str | None, mqtt_out: str | None) -> None:
    """Refuse options that cannot work, before anything is made."""
    if not max_upload_mb > 0:
        raise EchoError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if mqtt_out and not mqtt:
        raise EchoError("--mqtt-out publishes through the broker of --mqtt: give --mqtt too")
    if mqtt:
        from echoengine.service.mqtt import check_topic, parse_broker_url

        parse_broker_url(mqtt)
        if mqtt_out is not None:
            check_topic(mqtt_out, wildcards=False)


def mqtt_bridge(service: Service, url: str, *, out_topic: str | None = None, client_id: str | None = None):
    """An MQTT bridge that queues sensor messages as :func:`ingest` does and publishes the worker's detections.

    ``client_id`` (:func:`mqtt_client_id`) asks the broker for a persistent session; None: a clean one.
    """
    from echoengine.service.mqtt import MqttBridge

    def submit(message) -> tuple[int, bool]:
        return ingest(service.db, service.store, message.audio, filename=message.filename,
                      sensor_id=message.sensor_id, recorded_at=message.recorded_at, lat=message.lat, lon=message.lon,
                      alt=message.alt)

    bridge = MqttBridge(url, submit, out_topic=out_topic, api_base=service.base_url, client_id=client_id)
    if out_topic:
        service.worker.on_detection(bridge.publish_detection)
    return bridge


def mqtt_client_id(store: str | Path) -> str:
    """The store's MQTT client id, ``echoengine-`` and 12 hex digits: made once, kept in ``store/mqtt-client-id``.

    Random when made, so that servers on other machines whose stores have the
    same path (``/data`` in every container) never share one; the same for
    every start on this store, so that the broker keeps its session while the
    server is down.
    """
    path = Path(store) / MQTT_CLIENT_ID_FILE
    try:
        found = path.read_text(encoding="utf-8").strip()
    except OSError:
        found = ""
    if _CLIENT_ID.fullmatch(found):
        return found
    made = f"echoengine-{uuid.uuid4().hex[:12]}"
    try:
        path.write_text(made + "\n", encoding="utf-8")
    except OSError as exc:
        raise EchoError(f"--store {store}: cannot write {path.name} ({exc.strerror})") from None
    return made


def _folder(store: str | Path) -> tuple[Path, bool]:
    """The store folder, made if missing; and whether it was made now."""
    store = Path(store)
    made = not store.exists()
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EchoError(f"--store {store}: cannot create it ({exc.strerror})") from None
    if not store.is_dir():
        raise EchoError(f"--store {store}: not a folder")
    return store, made


def _remove_new_store(folder: Path) -> None:
    """Remove what a failed start made in the store folder it made (only those files; the folder if empty)."""
    names = [DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal", LOCK_FILE, MQTT_CLIENT_ID_FILE]
    for path in [*(folder / name for name in names), folder / "audio" / "incoming", folder / "audio", folder]:
        with contextlib.suppress(OSError):  # a folder that is not empty stays, with what it holds
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


def serve(bundle: str | Path, *, store: str | Path, db: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, options: DetectOptions | None = None, api_key_file: str | Path | None = None,
          public_reads: bool = False, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, mqtt: str | None = None,
          mqtt_out: str | None = None, log_level: str = "info", scoring_processes: int | None = None,
          candidate: bool = False, activate: bool = False, given: Collection[str] | None = None) -> None:
    """Serve ``bundle`` over HTTP at ``host:port`` until interrupted (see :func:`open_service` for the rest).

    The model scores in ``scoring_processes`` processes of their own (default
    :func:`~echoengine.service.scorer_process.default_processes`: 2 on 2 or more cores).

    The port is taken first, then the store (:func:`open_service`): a server
    that cannot have both stops before it changes anything in the store.
    """
    import uvicorn

    from echoengine.service.app import create_app

    shown = f"[{host}]" if ":" in host else host
    with _listen(host, port) as listener:
        service = open_service(bundle, store=store, db=db, options=options, api_key_file=api_key_file,
                               public_reads=public_reads, max_upload_mb=max_upload_mb,
                               base_url=f"http://{shown}:{port}", mqtt=mqtt, mqtt_out=mqtt_out,
                               scoring_processes=scoring_processes or default_processes(), candidate=candidate,
                               activate=activate, given=given)
        config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level)
        logging.getLogger("uvicorn.error").info("serving on %s (API reference at /docs; Ctrl+C to stop)",
                                                service.base_url)
        try:
            uvicorn.Server(config).run(sockets=[listener])
        except KeyboardInterrupt:
            pass
        finally:
            service.stop()  # does nothing more when the application's shutdown stopped it


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds it), or a one-line EchoError saying why it cannot be."""
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so; without it, each small answer on
    # a kept-alive connection waited for the client's delayed ACK (about 40 ms: headers and body are two writes)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise EchoError(f"--port {port}: {host}:{port} is in use, by another server perhaps; stop it, or give "
                            "another --port") from None
        raise EchoError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None
    listener.set_inheritable(True)
    return listener
