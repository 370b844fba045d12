"""The background worker: the database is the queue, one thread scores what is queued.

A recording's row goes ``queued`` -> ``running`` (claimed, ``attempts`` + 1)
-> ``done`` or ``failed``. Its detections are written in the same transaction
that marks it ``done``, so a server killed at any moment (``kill -9``) leaves
each recording either finished with all its detections or without any; at
the next start the rows left ``running`` go back to ``queued``
(:meth:`Worker.requeue`) and are scored again: nothing is lost, nothing is
stored twice. A recording whose scoring killed the server
:data:`MAX_ATTEMPTS` times is marked ``failed`` instead of killing it again.
One server (one worker) per database: a second server would requeue the
first one's running work. A server locks its store before it opens the
database (:mod:`echoengine.service.lock`), so a second one on the same store
is refused; two stores must not share one ``--db``.

After each commit, the callbacks given to :meth:`Worker.on_detection` get
every new detection as a JSON-able dict (:func:`echoengine.service.views.detection_json`):
what the MQTT bridge publishes. A callback hears of a detection at most once
(a kill between the commit and the call loses the call, never the detection).

Examples
--------
>>> worker = Worker(db, store, served, base_url="http://127.0.0.1:8000")  # doctest: +SKIP
>>> worker.on_detection(lambda detection: print(detection["species"], detection["url"]))  # doctest: +SKIP
>>> worker.start()  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import NamedTuple

from sqlalchemy import insert, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import selectinload

from echoengine.errors import AudioError
from echoengine.events import event_lineage
from echoengine.service.db import Database
from echoengine.service.schema import Detection, Recording, utc_now
from echoengine.service.served import ServedModel
from echoengine.service.store import AudioStore
from echoengine.service.views import detection_json

__all__ = ["MAX_ATTEMPTS", "Worker"]

logger = logging.getLogger("echoengine.service")
#: Claims of one recording before it is marked failed (each claim that did not finish was a server dying on it).
MAX_ATTEMPTS = 3
DetectionCallback = Callable[[dict], object]


class _Batch(NamedTuple):
    """Recordings claimed together (``(id, stored name)``, oldest first) and, in a scoring process, their future."""

    claimed: list[tuple[int, str]]
    served: ServedModel  # the model that scores them, and that their detections name
    future: Future | None


class Worker:
    """Scores queued recordings in a background thread, oldest first, up to ``claim`` of them together.

    Parameters
    ----------
    db, store : Database, AudioStore
        The queue and the audio.
    served : ServedModel
        The model that scores (:func:`echoengine.service.served.load_model`).
    base_url : str
        The server's address, for the links in detections (``""``: relative links).
    poll : float
        Seconds between looks at the queue when nothing wakes the worker
        (recordings queued by this process wake it at once).
    claim : int
        Recordings claimed and scored together at most: their windows share
        the model's batches as in ``detect``, so short uploads cost what one
        long recording does. Each is marked done (or failed) as it finishes; the results of a scoring process's
        claim are stored together, in one transaction.
    """

    def __init__(self, db: Database, store: AudioStore, served: ServedModel, *, base_url: str = "",
                 poll: float = 2.0, claim: int = 8) -> None:
        self.db, self.store, self.served = db, store, served
        self.base_url, self.poll, self.claim = base_url, poll, claim
        self._callbacks: list[DetectionCallback] = []
        self._scoring = threading.Lock()  # held while batches are claimed and settled, and by :meth:`use`
        self._next: ServedModel | None = None  # the model use() switches to, once the batches in flight are settled
        self._previous: ServedModel = served
        self._switched = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_detection(self, callback: DetectionCallback) -> DetectionCallback:
        """Call ``callback(detection dict)`` for each detection stored from now on (usable as a decorator).

        The call happens in the worker's thread after the detections are
        committed; an exception in it is logged and does not stop the worker.
        """
        self._callbacks.append(callback)
        return callback

    def use(self, served: ServedModel) -> ServedModel:
        """Score with ``served`` from the next claim on; the model it replaces.

        The batches already handed to the old model are settled first (their
        detections name it), so that its scoring processes may be stopped once
        this returns; a running worker makes the switch in its thread.
        """
        with self._scoring:
            self._next = served
            if not self.alive:
                return self._switch()
            self._switched.clear()
        self.db.queued.set()  # wake the loop
        while not self._switched.wait(0.5):
            with self._scoring:
                if self._next is served and not self.alive:  # stopped meanwhile
                    return self._switch()
        return self._previous

    def _switch(self) -> ServedModel:
        """Make the model waiting in ``use`` the one that scores (the caller holds ``_scoring``)."""
        self._previous, self.served, self._next = self.served, self._next, None
        self._switched.set()
        return self._previous

    @property
    def alive(self) -> bool:
        """Whether the worker's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def requeue(self) -> int:
        """Put the recordings a killed server left ``running`` back in the queue; how many."""
        with self.db.transaction() as session:
            result = session.execute(update(Recording).where(Recording.status == "running")
                                     .values(status="queued", started_at=None))
        if result.rowcount:
            logger.info("requeued %d recording(s) left running by an earlier server", result.rowcount)
        return result.rowcount

    def start(self) -> None:
        """Requeue what an earlier server left running, and start the thread."""
        self.requeue()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="echoengine-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the recording being scored (a recording left running is requeued at the next start)."""
        self._stop.set()
        self.db.queued.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        flight: deque[_Batch] = deque()  # claimed and handed to the scoring processes, oldest first
        while not self._stop.is_set():
            self.db.queued.clear()
            settling = None
            with self._scoring:
                try:
                    if self._next is None:
                        self._fill(flight)
                    if flight:
                        settling = flight.popleft()
                        self._settle_batch(settling)
                    elif self._next is not None:  # all that the old model had is settled
                        self._switch()
                        continue
                except Exception:  # the database went away, say: log it, wait, try again
                    logger.exception("worker: unexpected error; retrying in %.0f s", self.poll)
                    for batch in (settling, *flight):
                        self._drop(batch)
                    flight.clear()
                    settling = None
            if settling is None:
                self.db.queued.wait(self.poll)
        with self._scoring:
            while flight:
                self._settle_batch(flight.popleft())

    def _fill(self, flight: deque) -> None:
        """Claim and hand over batches until the scoring processes have enough (one batch without them).

        With scoring processes, the next claims are theirs before the last
        one's detections are stored: they never wait for the database.
        """
        process = self.served.process
        depth = process.depth if process is not None else 1
        while len(flight) < depth:
            batch = self._start()
            if batch is None:
                return
            flight.append(batch)

    def run_once(self) -> int | None:
        """Claim the oldest queued recordings (up to ``claim``) and score them; the first's id, or None."""
        with self._scoring:
            batch = self._start()
            if batch is None:
                return None
            self._settle_batch(batch)
            return batch.claimed[0][0]

    def _start(self) -> _Batch | None:
        """Claim the oldest queued recordings and, with scoring processes, hand them over; None: nothing queued."""
        claimed = self._claim(self.claim)
        if not claimed:
            return None
        served = self.served
        paths = [self.store.path(name) for _, name in claimed]
        return _Batch(claimed, served, served.process.submit(paths) if served.process is not None else None)

    def _settle_batch(self, batch: _Batch) -> None:
        """Settle a claimed batch: scored together, then one by one those the shared scoring could not finish."""
        claimed, served = batch.claimed, batch.served
        if batch.future is not None or len(claimed) > 1:
            claimed = self._score_together(batch)
        for recording_id, name in claimed:
            try:
                result = served.events(self.store.path(name))
            except AudioError as exc:
                result = exc.reason
            except Exception as exc:
                logger.exception("worker: recording %d failed", recording_id)
                result = _reason(exc)
            self._settle_all(served, [(recording_id, result)])

    def _score_together(self, batch: _Batch) -> list[tuple[int, str]]:
        """Score a batch's recordings together and settle them; those left when scoring broke.

        A scoring process's results arrive together and are stored in one
        transaction; in this thread each is stored as it is scored.
        """
        claimed, served = batch.claimed, batch.served
        settled: set[int] = set()
        results = []
        try:
            if batch.future is not None:
                results = [(claimed[index][0], result) for index, result in batch.future.result()]
            else:
                for index, result in served.events_of_many([self.store.path(name) for _, name in claimed]):
                    self._settle_all(served, [(claimed[index][0], result)])
                    settled.add(claimed[index][0])
        except Exception:  # one recording broke the batch: the rest are scored alone, so only it fails
            logger.exception("worker: scoring %d recordings together failed; scoring them one by one",
                             len(claimed) - len(settled))
        if results:
            self._settle_all(served, results)
            settled.update(recording_id for recording_id, _ in results)
        return [(recording_id, name) for recording_id, name in claimed if recording_id not in settled]

    def _drop(self, batch: _Batch | None) -> None:
        """Give up a claimed batch after an error: those of its recordings not yet settled go back to the queue."""
        if batch is not None:
            if batch.future is not None:
                batch.future.cancel()
            for recording_id, _ in batch.claimed:
                self._release(recording_id)

    def _settle_all(self, served: ServedModel, results: list[tuple[int, tuple | str]]) -> None:
        """Store recordings' detections and mark them done (or failed, for a reason); publish the detections.

        A database that is away or busy puts them back in the queue (and the error goes up); a row it refuses
        fails only its own recording: several that cannot be stored together are stored one by one.
        """
        try:
            stored = self._finish(served, results)
        except (OperationalError, InterfaceError):  # queue them again (attempts bound the retries)
            logger.exception("worker: recordings %s could not be stored", ", ".join(str(i) for i, _ in results))
            for recording_id, _ in results:
                self._release(recording_id)
            raise
        except Exception as exc:
            if len(results) > 1:
                logger.warning("worker: storing %d recordings together failed; storing them one by one", len(results))
                for result in results:
                    self._settle_all(served, [result])
                return
            logger.exception("worker: the detections of recording %d were refused", results[0][0])
            stored = self._finish(served, [(results[0][0], f"its detections could not be stored ({_reason(exc)})")])
        self._publish(stored)

    def _claim(self, limit: int) -> list[tuple[int, str]]:
        with self.db.transaction() as session:
            rows = session.scalars(select(Recording).where(Recording.status == "queued").order_by(Recording.id)
                                   .limit(limit).with_for_update(skip_locked=True)).all()
            claimed = []
            for row in rows:
                row.attempts += 1
                if row.attempts > MAX_ATTEMPTS:
                    row.status, row.finished_at = "failed", utc_now()
                    row.error = f"gave up after {MAX_ATTEMPTS} attempts: the server stopped while scoring it each time"
                    self.db.queued.set()  # the loop looks again at once
                    continue
                row.status, row.started_at, row.error = "running", utc_now(), None
                claimed.append((row.id, row.audio))
            return claimed

    def _release(self, recording_id: int) -> None:
        """Put a recording this worker claimed back in the queue (if the database lets it; else a restart will)."""
        try:
            with self.db.transaction() as session:
                session.execute(update(Recording).where(Recording.id == recording_id, Recording.status == "running")
                                .values(status="queued", started_at=None))
        except Exception:
            logger.exception("worker: recording %d stays running until the next start", recording_id)

    def _finish(self, served: ServedModel, results: list[tuple[int, tuple | str]]) -> list[int]:
        """Write recordings' detections and mark them done or failed, in one transaction; the new detections' ids.

        A result is ``(events, top species)`` or the reason the recording failed.
        """
        with self.db.transaction() as session:
            found = session.scalars(select(Recording).where(Recording.id.in_([i for i, _ in results])))
            recordings, rows, now = {row.id: row for row in found}, [], utc_now()
            for recording_id, result in results:
                recording = recordings.get(recording_id)
                if recording is None or recording.status != "running":  # requeued by another server meanwhile
                    continue
                recording.finished_at, recording.model_id = now, served.row.id
                if isinstance(result, str):
                    recording.status, recording.error = "failed", result
                    continue
                try:
                    rows += self._rows_of(served, recording, *result)
                except Exception as exc:  # this recording's events cannot be stored: it fails alone
                    logger.exception("worker: the events of recording %d cannot be stored", recording_id)
                    recording.status, recording.error = "failed", _reason(exc)
                    continue
                recording.status = "done"
            if not rows:
                return []
            # one INSERT ... RETURNING for all of them (the ORM's unit of work cost a sixth of the server's time)
            inserted = insert(Detection).returning(Detection.id, sort_by_parameter_order=True)
            return list(session.scalars(inserted, rows))

    @staticmethod
    def _rows_of(served: ServedModel, recording: Recording, events, tops: list[list[dict]]) -> list[dict]:
        """The detection rows of a recording's events (after the place-and-season filter, when the model has one)."""
        if served.options.location_filter is not None:  # the sensor's row is read only for a filter
            events, tops = served.where_and_when(events, tops, **_place_of(recording))
        return _detection_rows(events, tops, recording_id=recording.id, model_id=served.row.id,
                               base=recording.recorded_at or recording.received_at, taxonomy=served.taxonomy)

    def _publish(self, detection_ids: list[int]) -> None:
        """Give each new detection to the callbacks (after the commit: what they get is stored)."""
        if not self._callbacks or not detection_ids:
            return
        with self.db.session() as session:
            found = session.scalars(select(Detection).where(Detection.id.in_(detection_ids)).order_by(Detection.id)
                                    .options(selectinload(Detection.recording), selectinload(Detection.model)))
            documents = [detection_json(d, base_url=self.base_url) for d in found]
        for document in documents:
            for callback in self._callbacks:
                try:
                    callback(document)
                except Exception:
                    logger.exception("worker: an on_detection callback failed on detection %d", document["id"])


def _reason(exc: BaseException) -> str:
    """An exception as a recording's one-line reason: its type and the first line of its message."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _detection_rows(events, tops: list[list[dict]], *, recording_id: int, model_id: int, base: dt.datetime,
                    taxonomy) -> list[dict]:
    """The ``detections`` rows of a recording's events (``file_events``' table and their top species)."""
    columns = {name: events[name].tolist() for name in ("label", "start", "end", "score", "mean_score", "windows")}
    lineages = ([event_lineage(event, taxonomy) for event in events.to_dict("records")] if taxonomy is not None
                else [None] * len(events))
    now = utc_now()
    return [{"recording_id": recording_id, "model_id": model_id, "species": str(label), "start": float(start),
             "end": float(end), "time": base + dt.timedelta(seconds=float(start)), "score": float(score),
             "mean_score": float(mean), "windows": int(windows), "top_species": top, "lineage": lineage,
             "created_at": now}
            for label, start, end, score, mean, windows, top, lineage in zip(
                *columns.values(), tops, lineages, strict=True)]


def _place_of(recording: Recording) -> dict:
    """Where and when a recording was made: its own position, else its sensor's, its time, and its sensor as the
    site an occurrence table's rows may name."""
    sensor = recording.sensor
    return {"lat": recording.lat if recording.lat is not None else sensor and sensor.lat,
            "lon": recording.lon if recording.lon is not None else sensor and sensor.lon,
            "when": recording.recorded_at, "site": recording.sensor_id or ""}
