"""Load on ``echoengine serve``: concurrent clients uploading real recordings and querying, against ``detect``.

Usage::

    python bench/serve_load.py [--bundle DIR] [--data ../shared/data/soundscapes] [--clients 8]
                               [--duration 60] [--pause 0.5] [--in-flight 8] [--copies 2] [--rounds 3] [--onnx]
                               [--db URL] [--threshold 0] [--top-n 1]

The real server runs in a subprocess (``echoengine serve BUNDLE --store TMP --port FREE``, on 127.0.0.1, with
``--onnx`` and ``--db`` when given) while ``--clients`` threads (one ``httpx.Client`` each, pausing ``--pause``
seconds, default 0.5, after each round of queries: about two rounds a second each; ``--pause 0`` floods the server
with as many requests as it answers) work for ``--duration`` seconds. Each client keeps ``--in-flight`` recordings
of its own (default 8) in the queue: it uploads (``POST /api/recordings``, with a sensor, a time and a position)
until it has that many unfinished, then repeats ``GET /api/recordings/{id}`` (its oldest, and the next while they
are done), ``GET /api/detections`` (a different set of filters each time: species and score, sensor, time span and
offset, review) and ``GET /api/species``, and uploads again as its recordings are ``done`` or ``failed``. So the
worker always has work (the server's rate is its capacity, not the clients' pace), the queue stays bounded, and
every upload is scored by the end.

Every upload is new content (the store keeps audio once per content hash, and a known content is answered without
scoring): each recording of ``--data`` is decoded once to 16-bit PCM WAV in a temporary folder, and each upload is
that WAV with :data:`TAIL` samples of near-silence appended (each -1, 0 or +1 at random, under -90 dBFS: new content
in every run, even on a ``--db`` that keeps earlier runs' recordings). ``echoengine detect`` runs on ``--copies``
WAV copies of each recording (default 2, each a content of its own; its wall time measured inside its process, after
its imports; the bundle load is included), with the same bundle and scoring options, in turn with the server's
capacity with a full queue and no HTTP traffic (every copy queued into a new store before a server starts on it,
from its first claim to its last ``done``) and the loaded server, for ``--rounds`` rounds (default 3; the best of
each counts: a busy spell of this shared machine slows all three alike, and a run is only ever slowed by the others'
load).

The table gives, for the best loaded round, per endpoint, requests, requests per second, p50 and p99 latency and
errors (expected: 0); the audio seconds the loaded server scored per second (recordings that reached ``done``, from
the first upload's arrival to the last ``done``, the queue drained for at most ``--drain`` seconds after the clients
stop) next to ``detect``'s and the full queue's, with their ratios (target: at least 0.8x); the CPU seconds of the
server's process, its scoring processes and the clients while loaded; and the peak resident memory (``VmHWM``) of
the server and its children. Without ``--bundle`` a quick one is made first (``synth``, ``train --backbone small_cnn
--epochs 1``, ``export``); the defaults score every window's best class (``--threshold 0 --top-n 1``): there are
detections to query.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
from sqlalchemy import text

from echoengine.sources import find_audio

TARGET_RATIO = 0.8
#: Samples of near-silence (each -1, 0 or +1, at random: under -90 dBFS) appended to each upload: a content of its own.
TAIL = 32
ENDPOINTS = ("POST /api/recordings", "GET /api/recordings/{id}", "GET /api/detections", "GET /api/species")
ECHOENGINE = [sys.executable, "-m", "echoengine"]
# ``echoengine detect`` in a fresh process, timed from after its imports to its end; the seconds go to argv[1].
DETECT_SCRIPT = """
import sys, time
import echoengine.api, echoengine.detection
from echoengine.cli import main
start = time.perf_counter()
status = main(sys.argv[2:])
open(sys.argv[1], 'w').write(repr(time.perf_counter() - start))
sys.exit(status)
"""


def environment() -> dict:
    """This process's environment with ``src/`` first on PYTHONPATH (what the subprocesses import)."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}


def run_echoengine(arguments: list[str], log: Path) -> None:
    """``echoengine ARGUMENTS`` in a subprocess; exit with its log's end if it fails."""
    with open(log, "w") as out:
        status = subprocess.run([*ECHOENGINE, *arguments], stdout=out, stderr=subprocess.STDOUT,
                                env=environment()).returncode
    if status:
        sys.exit(f"echoengine {' '.join(arguments)} failed ({status}):\n{log.read_text()[-2000:]}")


def quick_bundle(folder: Path) -> Path:
    """small_cnn on the default front end, one epoch on synthetic calls, exported to ONNX (as .ci/serve-only)."""
    bundle = folder / "bundle"
    folder.mkdir(parents=True, exist_ok=True)
    run_echoengine(["synth", str(folder / "calls"), "--files-per-class", "6"], folder / "synth.log")
    run_echoengine(["train", str(folder / "calls"), "--out", str(bundle), "--backbone", "small_cnn",
                    "--epochs", "1", "--quiet"], folder / "train.log")
    run_echoengine(["export", str(bundle)], folder / "export.log")
    return bundle


class Sources:
    """The recordings of ``data`` as 16-bit WAV copies in ``folder``, and a new content for each upload.

    Parameters
    ----------
    files : list of str
        The recordings (any format soundfile reads).
    folder : Path
        Where the WAV copies go (what ``detect`` scores).
    """

    def __init__(self, files: list[str], folder: Path, copies: int = 1) -> None:
        folder.mkdir(parents=True)
        self.folder, self.items, self.seconds, self.copies = folder, [], 0.0, copies
        for i, path in enumerate(files):
            samples, rate = sf.read(path, dtype="int16", always_2d=True)
            self.items.append((f"{i:03d}_{Path(path).stem}.wav", samples, rate))
            for copy in range(copies):  # each copy a content of its own (copy 0: the file as it is)
                name = f"{copy}_{i:03d}_{Path(path).stem}.wav"
                sf.write(folder / name, samples if copy == 0 else _with_tail(samples), rate, subtype="PCM_16")
                self.seconds += len(samples) / rate
        self._count = 0
        self._lock = threading.Lock()

    def next_upload(self, start: int) -> tuple[str, bytes]:
        """The next upload (a walk through the files from ``start``): its name and WAV bytes, a new content."""
        with self._lock:
            self._count += 1
            number = self._count
        name, samples, rate = self.items[(start + number) % len(self.items)]
        buffer = io.BytesIO()
        sf.write(buffer, _with_tail(samples), rate, format="WAV", subtype="PCM_16")
        return name, buffer.getvalue()


def _with_tail(samples: np.ndarray) -> np.ndarray:
    """``samples`` with :data:`TAIL` samples of near-silence appended: a new content, the same sound."""
    tail = np.random.default_rng().integers(-1, 2, size=(TAIL, samples.shape[1]), dtype=np.int16)
    return np.concatenate([samples, tail])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_kib(pid: int) -> int:
    """``VmHWM`` of a process (KiB; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next((int(line.split()[1]) for line in status if line.startswith("VmHWM")), 0)
    except OSError:
        return 0


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (children, their children, ...), from ``/proc/*/stat``."""
    parents: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(stat.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


class ServerProcess:
    """``echoengine serve`` in a subprocess on a free port, and the peak memory of it and its children."""

    def __init__(self, bundle: Path, store: Path, options: list[str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = store.parent / "server.log"
        command = [*ECHOENGINE, "serve", str(bundle), "--store", str(store), "--port", self.url.rsplit(":", 1)[1],
                   "--log-level", "warning", *options]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment())
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        """Keep the largest VmHWM seen of the server and each of its descendants."""
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            self.peaks[pid] = max(self.peaks.get(pid, 0), peak_kib(pid))

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by the server's own process and by its children (the scoring process)."""
        children = descendants(self.process.pid)
        return {"server": cpu_seconds(self.process.pid), "scorer": sum(cpu_seconds(pid) for pid in children)}

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for ``/healthz`` to answer 200; exit with the server's log if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"the server did not answer in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        """Stop the server (SIGTERM, then SIGKILL after 30 s); the peak memory (bytes) of it and its children."""
        self.sample()
        self._stop.set()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return sum(self.peaks.values()) * 1024


@dataclass
class Stats:
    """Latencies and errors per endpoint, filled by every client thread."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: str, seconds: float, error: str | None) -> None:
        """Record one request: its latency, and what went wrong (None: nothing)."""
        with self.lock:
            self.latencies[endpoint].append(seconds)
            if error is not None:
                self.errors[(endpoint, error)] += 1


@dataclass
class Load:
    """What the clients share: the server's address, the uploads, the statistics and the deadline."""

    url: str
    sources: Sources
    species: list[str]
    deadline: float
    pause: float = 0.0
    in_flight: int = 4
    stats: Stats = field(default_factory=Stats)
    uploaded: list[int] = field(default_factory=list)

    def call(self, http: httpx.Client, endpoint: str, method: str, path: str, expect: int = 200, **kwargs):
        """One timed request; its JSON when it answered ``expect``, else None (the error is recorded)."""
        start = time.perf_counter()
        try:
            answer = http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.stats.add(endpoint, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
            return None
        seconds = time.perf_counter() - start
        error = None if answer.status_code == expect else f"HTTP {answer.status_code}: {answer.text[:200]}"
        self.stats.add(endpoint, seconds, error)
        return answer.json() if error is None else None

    def filters(self, client: int, cycle: int) -> dict:
        """The query string of a client's ``cycle``-th ``GET /api/detections``: each cycle other filters."""
        species = self.species[cycle % len(self.species)]
        day = dt.datetime(2024, 5, 1 + client % 28)
        choices = [{"limit": 20},
                   {"species": species, "min_score": 0.2, "limit": 20},
                   {"sensor_id": f"bench-{client}", "limit": 50},
                   {"start": day.isoformat(), "end": (day + dt.timedelta(hours=6)).isoformat(), "limit": 20,
                    "offset": 5},
                   {"review": "unreviewed", "species": species, "limit": 10}]
        return choices[cycle % len(choices)]

    def upload(self, http: httpx.Client, client: int, number: int) -> int | None:
        """Upload a client's next recording; its id (None on an error)."""
        name, data = self.sources.next_upload(client * 13)
        fields = {"sensor_id": f"bench-{client}", "lat": str(-38.0 - client / 10), "lon": "143.5",
                  "recorded_at": (dt.datetime(2024, 5, 1 + client % 28, 6) + dt.timedelta(minutes=number)).isoformat()}
        answer = self.call(http, ENDPOINTS[0], "POST", "/api/recordings", 202, files={"file": (name, data)},
                           data=fields)
        if answer is None:
            return None
        self.uploaded.append(answer["id"])
        return answer["id"]

    def client(self, client: int) -> None:
        """Upload until ``in_flight`` recordings are unfinished, query, upload as they finish, until the deadline."""
        with httpx.Client(base_url=self.url, timeout=120.0) as http:
            pending, cycle, number = [], 0, 0
            while time.monotonic() < self.deadline:
                if len(pending) < self.in_flight:
                    uploaded, number = self.upload(http, client, number), number + 1
                    if uploaded is None:
                        time.sleep(0.5)  # an error: do not spin on it
                    else:
                        pending.append(uploaded)
                    continue
                while pending:  # the finished ones, oldest first, make room for new uploads
                    recording = self.call(http, ENDPOINTS[1], "GET", f"/api/recordings/{pending[0]}")
                    if recording is not None and recording["status"] not in ("done", "failed"):
                        break
                    pending.pop(0)
                self.call(http, ENDPOINTS[2], "GET", "/api/detections", params=self.filters(client, cycle))
                self.call(http, ENDPOINTS[3], "GET", "/api/species")
                cycle += 1
                time.sleep(self.pause)


def drain(url: str, cap: float) -> tuple[float, int]:
    """Wait until nothing is queued or running (at most ``cap`` s); the seconds waited and what is left."""
    start = time.monotonic()
    left = -1
    while time.monotonic() - start < cap:
        health = httpx.get(f"{url}/healthz", timeout=30).json()
        left = health["queued"] + health["running"]
        if left == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - start, left


def capacity(bundle: Path, sources: Sources, scoring: list[str], folder: Path) -> tuple[float, float, int]:
    """The server's scoring rate with a full queue and no HTTP traffic.

    Every recording is queued into a new store before a server starts on
    it (as the MQTT bridge or a restart finds a queue); the rate is the
    audio scored over the time from the first claim to the last ``done``,
    read from the database once the queue is empty. Returns the audio
    seconds, that time, and the peak memory (bytes) of the server and its children.
    """
    from echoengine.service.db import Database, default_url
    from echoengine.service.ingest import ingest
    from echoengine.service.store import AudioStore

    store = folder / "capacity" / "store"
    store.mkdir(parents=True)
    db = Database.connect(default_url(store))
    db.migrate()
    for _ in range(len(sources.items) * sources.copies):
        name, data = sources.next_upload(0)
        ingest(db, AudioStore(store), data, filename=name)
    server = ServerProcess(bundle, store, scoring)
    try:
        server.wait_ready()
        drain(server.url, 600.0)
    finally:
        peak = server.stop()
    with db.session() as session:
        audio, first, last = session.execute(text(
            "SELECT SUM(duration), MIN(started_at), MAX(finished_at) FROM recordings WHERE status = 'done'")).one()
    db.dispose()
    span = (dt.datetime.fromisoformat(str(last)) - dt.datetime.fromisoformat(str(first))).total_seconds()
    return float(audio), max(span, 1e-9), peak


def _utc(text: str) -> float:
    return dt.datetime.fromisoformat(text.rstrip("Z")).replace(tzinfo=dt.UTC).timestamp()


def scored(url: str, ids: list[int], stats: Stats) -> tuple[float, float, int]:
    """Audio seconds of the uploads that reached ``done``, seconds from first arrival to last done, how many.

    A failed recording is an error of the worker (recorded in ``stats``).
    """
    audio, first, last, done = 0.0, float("inf"), 0.0, 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for recording_id in ids:
            row = http.get(f"/api/recordings/{recording_id}").json()
            first = min(first, _utc(row["received_at"]))
            if row["status"] == "done":
                audio, last, done = audio + row["duration"], max(last, _utc(row["finished_at"])), done + 1
            elif row["status"] == "failed":
                stats.add("worker (scoring)", 0.0, f"recording failed: {row['error']}")
    return audio, max(last - first, 1e-9), done


def detect_rate(bundle: Path, sources: Sources, scoring: list[str], folder: Path) -> float:
    """One ``echoengine detect`` over the WAV copies with the same options: audio seconds per wall second."""
    seconds, log = folder / "detect.seconds", folder / "detect.log"
    arguments = ["detect", str(bundle), str(sources.folder), "--out", str(folder / "detections"), "--quiet", *scoring]
    with open(log, "w") as out:
        status = subprocess.run([sys.executable, "-c", DETECT_SCRIPT, str(seconds), *arguments], stdout=out,
                                stderr=subprocess.STDOUT, env=environment()).returncode
    if status:
        sys.exit(f"echoengine {' '.join(arguments)} failed ({status}):\n{log.read_text()[-2000:]}")
    return sources.seconds / float(seconds.read_text())


@dataclass
class Reference:
    """``detect``'s rate and the server's with a full queue, a value per round."""

    detect: list[float] = field(default_factory=list)
    full_queue: list[float] = field(default_factory=list)
    peak: int = 0


def reference(found: Reference, bundle: Path, sources: Sources, scoring: list[str], folder: Path) -> None:
    """One round of ``detect`` then the full-queue server, added to ``found``."""
    found.detect.append(detect_rate(bundle, sources, scoring, folder))
    audio, span, peak = capacity(bundle, sources, scoring, folder)
    found.full_queue.append(audio / span)
    found.peak = max(found.peak, peak)


@dataclass
class Result:
    """What one run measured."""

    stats: Stats
    period: float
    audio: float
    span: float
    done: int
    uploads: int
    left: int
    drained: float
    peak: int
    cpu: dict[str, float]
    reference: Reference = field(default_factory=Reference)
    loaded: list[float] = field(default_factory=list)  # every round's loaded rate (this is the best one's)


def print_table(result: Result) -> None:
    """The one table: endpoints, then scoring throughput against detect, then peak memory."""
    stats = result.stats
    print(f"{'endpoint':<28} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    all_latencies = []
    for endpoint in ENDPOINTS:
        latencies = np.array(stats.latencies.get(endpoint, [np.nan])) * 1000
        all_latencies += stats.latencies.get(endpoint, [])
        errors = sum(n for (name, _), n in stats.errors.items() if name == endpoint)
        count = len(stats.latencies.get(endpoint, []))
        print(f"{endpoint:<28} {count:>9} {count / result.period:>8.1f} {np.percentile(latencies, 50):>8.1f} "
              f"{np.percentile(latencies, 99):>8.1f} {errors:>7}")
    everything = np.array(all_latencies or [np.nan]) * 1000
    print(f"{'all':<28} {len(all_latencies):>9} {len(all_latencies) / result.period:>8.1f} "
          f"{np.percentile(everything, 50):>8.1f} {np.percentile(everything, 99):>8.1f} "
          f"{sum(stats.errors.values()):>7}")
    server_rate = result.audio / result.span
    detect, full_queue = max(result.reference.detect), max(result.reference.full_queue)
    drained = "drained" if result.left == 0 else f"NOT drained, {result.left} left"
    print(f"\n{'scoring (audio s per wall s)':<28} {'audio s':>9} {'audio s/s':>10}")
    rounds = len(result.reference.detect)
    print(f"{'server (serve), loaded':<28} {result.audio:>9.0f} {server_rate:>10.1f}   best of {rounds}: "
          f"{result.done}/{result.uploads} uploads done in {result.span:.1f} s (queue {drained} {result.drained:.1f} s "
          f"after the clients); rounds {', '.join(f'{r:.0f}' for r in result.loaded)}")
    print(f"{'server, a full queue':<28} {'':>9} {full_queue:>10.1f}   best of {rounds}: every file queued before "
          f"a server starts (no HTTP traffic); rounds {', '.join(f'{r:.0f}' for r in result.reference.full_queue)}")
    print(f"{'echoengine detect':<28} {'':>9} {detect:>10.1f}   best of {rounds}, same WAV files, same options, "
          f"in turn with the others; rounds {', '.join(f'{r:.0f}' for r in result.reference.detect)}")
    for name, rate, note in (("ratio server / detect", server_rate, "(with the clients' load on the same cores)"),
                             ("ratio, a full queue", full_queue, "")):
        ratio = rate / detect
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"{name:<28} {'':>9} {ratio:>9.2f}x   target >= {TARGET_RATIO}x: {verdict} {note}")
    if result.cpu:
        cpu, total = result.cpu, result.cpu["wall"] * (os.cpu_count() or 1)
        shares = ", ".join(f"{name} {cpu[name]:.1f} s ({cpu[name] / total:.0%})"
                           for name in ("server", "scorer", "clients"))
        print(f"{'CPU while loaded':<28} {'':>9} {cpu['wall']:>6.1f} s wall x {os.cpu_count()} cores: {shares}")
    print(f"{'server peak memory (VmHWM)':<28} {'':>9} {result.peak / 2**20:>6.0f} MiB")
    if stats.errors:
        print("\nerrors:")
        for (endpoint, error), count in stats.errors.most_common():
            print(f"  {count:>5} x {endpoint}: {error}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="the bundle served (default: a quick small_cnn one made here)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/soundscapes",
                        help="the recordings uploaded (default ../shared/data/soundscapes)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the clients run (default 60)")
    parser.add_argument("--drain", type=float, default=60.0,
                        help="most seconds to wait for the queue to empty after the clients stop (default 60)")
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds a client waits after each round of queries (default 0.5; 0: none, a flood)")
    parser.add_argument("--in-flight", type=int, default=8,
                        help="recordings each client keeps queued or being scored (default 8)")
    parser.add_argument("--copies", type=int, default=2,
                        help="copies of each recording (each a content of its own) that detect and the full queue "
                             "score (default 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of detect, the full-queue server and the loaded one, in turn (default 3)")
    parser.add_argument("--onnx", action="store_true", help="serve and detect with the bundle's model.onnx")
    parser.add_argument("--db", help="a SQLAlchemy URL for the server (default: SQLite in the temporary store)")
    parser.add_argument("--threshold", type=float, default=0.0, help="serve's and detect's --threshold (default 0)")
    parser.add_argument("--top-n", type=int, default=1, help="serve's and detect's --top-n (default 1)")
    args = parser.parse_args()
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be at least 1 and --duration positive")
    if not args.data.exists():
        sys.exit(f"real data not found at {args.data}; pass --data")
    if args.bundle is not None and not args.bundle.is_dir():
        sys.exit(f"--bundle {args.bundle}: no such folder")
    if args.onnx and args.bundle is not None and not (args.bundle / "model.onnx").exists():
        sys.exit(f"--onnx: {args.bundle} has no model.onnx; run echoengine export {args.bundle} first")
    return args


def run_load(args: argparse.Namespace, bundle: Path, sources: Sources, scoring: list[str], tmp: Path) -> Result:
    """Start the server, run the clients, wait for the queue, read back what was scored, stop the server."""
    server = ServerProcess(bundle, tmp / "store", [*scoring, *(["--db", args.db] if args.db else [])])
    try:
        server.wait_ready()
        models = httpx.get(f"{server.url}/api/models", timeout=30).json()
        species = next(model["classes"] for model in models if model["serving"])
        load = Load(server.url, sources, species, time.monotonic() + args.duration, args.pause, args.in_flight)
        threads = [threading.Thread(target=load.client, args=(k,)) for k in range(args.clients)]
        before = {**server.cpu(), "clients": _own_cpu()}
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        period = time.monotonic() - start
        drained, left = drain(server.url, args.drain)
        after = {**server.cpu(), "clients": _own_cpu()}
        cpu = {name: after[name] - before[name] for name in after} | {"wall": time.monotonic() - start}
        audio, span, done = scored(server.url, load.uploaded, load.stats)
    finally:
        peak = server.stop()
    return Result(load.stats, period, audio, span, done, len(load.uploaded), left, drained, peak, cpu)


def _own_cpu() -> float:
    return sum(resource.getrusage(resource.RUSAGE_SELF)[:2])  # user + system seconds


def main() -> None:
    args = parse_args()
    files = find_audio([args.data])
    scoring = ["--threshold", str(args.threshold), "--top-n", str(args.top_n), *(["--onnx"] if args.onnx else [])]
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = args.bundle or quick_bundle(tmp / "quick")
        sources = Sources(files, tmp / "wav", args.copies)
        print(f"bundle {bundle}; {len(files)} files x {args.copies} copies, {sources.seconds / 60:.1f} min of "
              f"audio from {args.data}", file=sys.stderr)
        found, results = Reference(), []
        for round_ in range(args.rounds):  # in turn: a busy spell of the machine slows all three alike
            folder = tmp / f"round{round_}"
            folder.mkdir()
            reference(found, bundle, sources, scoring, folder)
            results.append(run_load(args, bundle, sources, scoring, folder))
            print(f"round {round_ + 1}: detect {found.detect[-1]:.1f}, server with a full queue "
                  f"{found.full_queue[-1]:.1f}, loaded {results[-1].audio / results[-1].span:.1f} audio s/s",
                  file=sys.stderr, flush=True)
        result = max(results, key=lambda run: run.audio / run.span)  # the best of each counts
        result.reference, result.loaded = found, [run.audio / run.span for run in results]
        result.peak = max(found.peak, *(run.peak for run in results))
    load = os.getloadavg()[0]
    print(f"echoengine serve{' --onnx' if args.onnx else ''} ({' '.join(scoring)}), {args.clients} clients for "
          f"{args.duration:g} s on 127.0.0.1, {os.cpu_count()} cores, load average {load:.2f} at the end\n")
    print_table(result)


if __name__ == "__main__":
    main()
