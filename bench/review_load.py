"""Latency of the review API with 10,000 detections: the list's filters and orders, deep pages, queue, precision.

Usage::

    python bench/review_load.py [--bundle DIR] [--db URL] [--detections 10000] [--requests 50]

A new store is filled before a server starts on it: rows are inserted
directly through the schema (:mod:`echoengine.service.schema`; no scoring),
``--detections`` detections (default 10,000) of 12 species (a few common, most
rare) over 8 sensors and 30 days, in 500 recordings of 60 s whose audio (8
synthetic 60 s FLAC files, one per sensor) is in the store; a sixth of them
reviewed (confirmed, rejected, uncertain, relabelled; some twice). Then the
real server (``echoengine serve BUNDLE --store TMP``, with ``--db`` when
given: it must name an empty database) answers one client, which asks each
endpoint ``--requests`` times (after 3 unmeasured ones) and prints one table
of p50 and p99 latency (ms) per endpoint. Without ``--bundle`` a quick one is
made first (as ``bench/serve_load.py`` does: about 25 s on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from sqlalchemy import func, insert, select

from echoengine.service.db import Database, default_url
from echoengine.service.schema import Detection, Model, Recording, Review, Sensor
from echoengine.service.store import AudioStore
from echoengine.synthetic import CALLS, synthesize_call
from serve_load import ServerProcess, quick_bundle

SPECIES = [f"species-{k:02d}" for k in range(12)]
SHARES = np.array([30, 20, 12, 8, 6, 5, 5, 4, 4, 3, 2, 1], float) / 100  # a few common species, most rare
SENSORS = [f"sensor-{k}" for k in range(8)]
RECORDINGS, SECONDS = 500, 60.0
START = dt.datetime(2024, 5, 1)


def _audio(store: AudioStore, rng: np.random.Generator) -> list[tuple[str, float]]:
    """One synthetic 60 s FLAC per sensor in the store: (its stored name, its duration)."""
    kept = []
    for k in range(len(SENSORS)):
        incoming = store.incoming(".flac")
        sf.write(incoming, synthesize_call(list(CALLS)[k % len(CALLS)], seconds=SECONDS, rng=rng), 32000)
        stored = store.keep(incoming, hashlib.sha256(incoming.read_bytes()).hexdigest(), ".flac")
        kept.append((stored.name, stored.info.duration))
    return kept


def _recordings(audio: list[tuple[str, float]], model_id: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for i in range(RECORDINGS):
        name, duration = audio[i % len(SENSORS)]
        at = START + dt.timedelta(minutes=int(rng.integers(0, 30 * 24 * 60)))
        rows.append({"sha256": hashlib.sha256(f"bench-{i}".encode()).hexdigest(), "audio": name,
                     "size": 1, "sensor_id": SENSORS[i % len(SENSORS)], "recorded_at": at, "received_at": at,
                     "duration": duration, "sample_rate": 32000, "channels": 1, "status": "done",
                     "attempts": 1, "model_id": model_id, "finished_at": at})
    return rows


def _detections(recordings: list[dict], n: int, model_id: int, rng: np.random.Generator) -> list[dict]:
    rows, step = [], (SECONDS - 3.0) / -(-n // len(recordings))  # each recording's events, spread over it
    for i in range(n):
        recording = recordings[i % len(recordings)]
        species = SPECIES[rng.choice(len(SPECIES), p=SHARES)]
        score = float(rng.beta(2, 2))
        start = round(step * (i // len(recordings)), 3)
        top = [{"species": species, "score": round(score, 4)}] + [
            {"species": other, "score": round(score * f, 4)}
            for other, f in zip([s for s in SPECIES if s != species][:4], (0.5, 0.3, 0.2, 0.1), strict=True)]
        rows.append({"recording_id": recording["id"], "model_id": model_id, "species": species,
                     "start": start, "end": start + 3.0, "score": score, "mean_score": score * 0.8, "windows": 2,
                     "time": recording["recorded_at"] + dt.timedelta(seconds=start), "top_species": top,
                     "created_at": recording["finished_at"]})
    return rows


def _reviews(detections: list[dict], rng: np.random.Generator) -> list[dict]:
    rows = []
    for detection in detections:
        if rng.random() > 1 / 6:
            continue
        for _ in range(1 + (rng.random() < 0.1)):  # some reviewed twice: the latest counts
            status = rng.choice(["confirmed", "rejected", "uncertain"], p=[0.6, 0.3, 0.1])
            relabel = status != "uncertain" and rng.random() < 0.1
            rows.append({"detection_id": detection["id"], "status": str(status), "reviewer": "bench",
                         "species": SPECIES[-1] if relabel else None, "created_at": detection["created_at"]})
    return rows


def _insert(session, table, rows: list[dict]) -> None:
    for k in range(0, len(rows), 2000):
        session.execute(insert(table), rows[k:k + 2000])


def fill(url: str, store: Path, n: int, seed: int = 0) -> dict[str, int]:
    """A new store at ``store`` (its database at ``url``) with ``n`` detections; how many rows of each kind."""
    rng = np.random.default_rng(seed)
    store.mkdir(parents=True, exist_ok=True)
    db = Database.connect(url)
    db.migrate()
    audio = _audio(AudioStore(store), rng)
    try:
        with db.transaction() as session:
            session.add_all([Sensor(id=s, name=s, lat=51.0 + k / 10, lon=-1.0 + k / 10) for k, s in enumerate(SENSORS)])
            model = Model(name="bench", version=1, weights_hash="0" * 16, fingerprint="bench", classes=SPECIES,
                          thresholds=[0.5] * len(SPECIES), options={}, path="bench")
            session.add(model)
            session.flush()
            recordings = _recordings(audio, model.id, rng)
            _insert(session, Recording, recordings)
            given = session.scalars(select(Recording.id).order_by(Recording.id))
            for row, recording_id in zip(recordings, given, strict=True):
                row["id"] = recording_id
            detections = _detections(recordings, n, model.id, rng)
            _insert(session, Detection, detections)
            if session.execute(select(func.min(Detection.id), func.max(Detection.id))).one() != (1, n):
                sys.exit("--db must name an empty database (the detections' ids are not 1 to n)")
            for row, detection_id in zip(detections, range(1, n + 1), strict=True):
                row["id"] = detection_id
            reviews = _reviews(detections, rng)
            _insert(session, Review, reviews)
    finally:
        db.dispose()
    return {"recordings": len(recordings), "detections": len(detections), "reviews": len(reviews)}


def endpoints(n: int) -> list[tuple[str, object]]:
    """(name, request) pairs: a request is a path with its query, or a function of the request's number."""
    week = {"start": "2024-05-08T00:00:00Z", "end": "2024-05-15T00:00:00Z"}
    return [
        ("list", {}), ("list species", {"species": SPECIES[3]}), ("list sensor", {"sensor_id": SENSORS[2]}),
        ("list start+end (a week)", week), ("list min+max score", {"min_score": 0.4, "max_score": 0.6}),
        ("list review=unreviewed", {"review": "unreviewed"}), ("list review=confirmed", {"review": "confirmed"}),
        ("list order=score", {"order": "score"}), ("list order=oldest", {"order": "oldest"}),
        ("list all filters", {"species": SPECIES[0], "sensor_id": SENSORS[1], **week, "min_score": 0.2,
                              "review": "unreviewed", "order": "score"}),
        ("list offset=n-50", {"offset": n - 50}),
        ("list order=score offset=n-50", {"order": "score", "offset": n - 50}),
        ("detection", lambda k: f"/api/detections/{1 + (k * 7919) % n}"),
        ("species", "/api/species"),
        ("review-queue (budget 50)", "/api/review-queue?budget=50&bins=5&seed=1"),
        ("review-queue one species", f"/api/review-queue?budget=50&bins=10&species={SPECIES[0]}"),
        ("precision", "/api/precision?bins=5"),
        ("precision one species", f"/api/precision?bins=10&species={SPECIES[0]}"),
        ("spectrogram.png", lambda k: f"/api/detections/{1 + (k * 7919) % n}/spectrogram.png"),
        ("audio", lambda k: f"/api/detections/{1 + (k * 7919) % n}/audio"),
    ]


def measure(client: httpx.Client, request, requests: int) -> list[float]:
    """Seconds per request (3 unmeasured first); exit on any answer but 200."""
    times = []
    for k in range(requests + 3):
        if isinstance(request, dict):
            path, params = "/api/detections", {"limit": 50, **request}
        else:
            path, params = (request(k) if callable(request) else request), None
        begin = time.perf_counter()
        answer = client.get(path, params=params)
        elapsed = time.perf_counter() - begin
        if answer.status_code != 200:
            sys.exit(f"{path} {params or ''}: {answer.status_code} {answer.text[:300]}")
        if k >= 3:
            times.append(elapsed)
    return times


def review_and_undo(client: httpx.Client, requests: int, n: int) -> list[float]:
    """Seconds per review posted and then deleted (the page's confirm and undo)."""
    times = []
    for k in range(requests + 3):
        begin = time.perf_counter()
        posted = client.post(f"/api/detections/{1 + (k * 104729) % n}/review",
                             json={"status": "confirmed", "reviewer": "bench"})
        deleted = client.delete(f"/api/reviews/{posted.json()['id']}")
        if posted.status_code != 201 or deleted.status_code != 200:
            sys.exit(f"review and undo: {posted.status_code} {deleted.status_code} {deleted.text[:300]}")
        if k >= 3:
            times.append(time.perf_counter() - begin)
    return times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="the bundle served (default: a quick small_cnn one made here)")
    parser.add_argument("--db", help="an empty database's SQLAlchemy URL (default: SQLite in the temporary store)")
    parser.add_argument("--detections", type=int, default=10_000, help="detections in the store (default 10000)")
    parser.add_argument("--requests", type=int, default=50, help="measured requests per endpoint (default 50)")
    args = parser.parse_args()
    if args.detections < 100 or args.requests < 1:
        parser.error("--detections must be at least 100 and --requests at least 1")
    if args.bundle is not None and not args.bundle.is_dir():
        sys.exit(f"--bundle {args.bundle}: no such folder")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or quick_bundle(tmp / "quick")
        store = tmp / "store"
        begin = time.perf_counter()
        counts = fill(args.db or default_url(store), store, args.detections)
        print(f"filled in {time.perf_counter() - begin:.1f} s: {counts}", file=sys.stderr, flush=True)
        onnx = ["--onnx"] if (bundle / "model.onnx").exists() else []
        server = ServerProcess(bundle, store, [*onnx, *(["--db", args.db] if args.db else [])])
        try:
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=60) as client:
                rows = [(name, measure(client, request, args.requests)) for name, request in endpoints(args.detections)]
                rows.append(("review + undo (POST, DELETE)", review_and_undo(client, args.requests, args.detections)))
        finally:
            server.stop()
    backend = (args.db or "sqlite").split(":", 1)[0]
    print(f"review API, {counts['detections']} detections, {counts['reviews']} reviews, {backend}, one client, "
          f"{args.requests} requests each; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'endpoint':<34} {'p50 ms':>8} {'p99 ms':>8}")
    for name, times in rows:
        ms = np.array(times) * 1000
        print(f"{name:<34} {np.percentile(ms, 50):>8.1f} {np.percentile(ms, 99):>8.1f}")


if __name__ == "__main__":
    main()
