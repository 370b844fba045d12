"""Detection on Ray: the files of a ``detect`` run scored across a Ray cluster, recorded by one writer.

The driver (the process that runs ``echoengine detect --engine ray``) finds
the files, cuts them into chunks of about ``chunk_seconds`` of audio (a
long recording is a chunk of its own; short ones are grouped, so that the
model's batches stay full) and hands each chunk to a Ray task. A task loads
the bundle once per worker process (by its folder: every worker must read
it), scores its files with :func:`echoengine.detection.scored_windows` (the
windows, batches, front end and model of a local run, one torch thread per
task) and yields each file's window scores as the file finishes (a Ray
streaming generator). The driver records each file in ``OUT/.detect/`` as
it arrives, exactly as a local run does, and writes the outputs with
:func:`echoengine.detection.write_outputs` at the end: the same bytes as a
local run, since a window's scores do not depend on which files share its
batch, and the outputs are rebuilt from the records in input order.

Failures: a worker killed mid-chunk (``kill -9``, a lost node) is retried
by Ray (``max_retries``); a retried generator yields again only what the
driver has not yet received, and the driver records each file once. A
driver killed mid-run leaves its records behind, so ``resume=True`` scores
only the files not yet recorded, as a local run's resume does.

Input: every worker reads the audio by the path the driver gives, so the
files must be on a file system every node mounts at the same path (NFS,
Lustre, a FUSE mount of object storage such as mountpoint-s3 or gcsfuse,
which read ranges on demand). URLs (``s3://``) are not read directly.

Examples
--------
>>> RayOptions(workers=2).tasks_in_flight(cluster_cpus=8)
4
>>> chunk_files([(0, "a.wav"), (1, "b.wav"), (2, "c.wav")], [30.0, 30.0, 900.0], chunk_seconds=600)
[[(0, 'a.wav'), (1, 'b.wav')], [(2, 'c.wav')]]
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from echoengine import audio, ledger
from echoengine.builtin import builtin_bundle, builtin_spec
from echoengine.detection import DetectOptions, check_windows, open_ledger, scored_windows, write_outputs
from echoengine.errors import AudioError, EchoError
from echoengine.events import check_species, detection_thresholds, kept_scores
from echoengine.layout import Bundle, BundleFiles
from echoengine.scoring import set_threads, window_scorer
from echoengine.sources import find_audio
from echoengine.taxonomy import bundle_taxonomy

__all__ = ["RayOptions", "chunk_files", "detect_on_ray", "ray_session"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray detect run goes.

    Parameters
    ----------
    address : str, optional
        A running cluster to join (``ray://HOST:10001`` or ``HOST:6379``, or
        ``auto``); None starts a local Ray instance for the run.
    workers : int, optional
        A local instance's CPUs (tasks at a time); on a cluster, the most
        tasks at a time (default: every CPU of the cluster).
    chunk_seconds : float
        Audio per task at most: short files are grouped until they reach it
        (a longer file is a task of its own); a run of less audio than four
        chunks per worker gets smaller ones. Smaller: finer retries and
        balance; larger: fuller batches and less per-task overhead.
    threads : int
        Torch threads (and CPUs reserved) per task.
    max_retries : int
        Times Ray runs a task again after its worker died.
    """

    address: str | None = None
    workers: int | None = None
    chunk_seconds: float = 600.0
    threads: int = 1
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise EchoError(f"--ray-workers must be at least 1, got {self.workers}")
        if not self.chunk_seconds > 0:
            raise EchoError(f"--ray-chunk-seconds must be above 0, got {self.chunk_seconds}")
        if self.threads < 1:
            raise EchoError(f"Ray threads per task must be at least 1, got {self.threads}")

    def tasks_in_flight(self, *, cluster_cpus: int) -> int:
        """Tasks handed out at a time: two per worker slot, so that a slot never waits for the driver."""
        slots = max(1, cluster_cpus // self.threads)
        return 2 * (min(slots, self.workers) if self.workers else slots)


def chunk_files(files: Sequence[tuple[int, str]], seconds: Sequence[float], *,
                chunk_seconds: float) -> list[list[tuple[int, str]]]:
    """Consecutive files grouped into chunks of about ``chunk_seconds`` of audio (a longer file alone)."""
    chunks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    total = 0.0
    for item, duration in zip(files, seconds, strict=True):
        if current and total + duration > chunk_seconds:
            chunks.append(current)
            current, total = [], 0.0
        current.append(item)
        total += duration
    if current:
        chunks.append(current)
    return chunks


# ---- the worker side --------------------------------------------------------------------------------------------
_SCORERS: dict[tuple, object] = {}  # one scorer per worker process and model: loaded by the first task only


def _scorer(folders: tuple[str, ...], onnx: bool, threads: int):
    """The scorer of the bundles in ``folders`` (or the built-in one names), loaded once per process (read without
    running their code)."""
    spec = builtin_spec(folders[0])
    stats = [] if spec else [BundleFiles(Path(folder)).weights.stat() for folder in folders]  # retrained in place?
    key = (folders, onnx, tuple((s.st_size, s.st_mtime_ns) for s in stats))
    if key not in _SCORERS:
        _SCORERS.clear()
        set_threads(threads)  # ONNX sessions take their threads when made, torch whenever
        if spec is not None:
            bundles = [builtin_bundle(spec)]
        elif onnx:
            from echoengine.layout import read_bundle

            bundles = [read_bundle(folder) for folder in folders]
        else:
            from echoengine.bundle import load_bundle  # torch

            bundles = [load_bundle(folder) for folder in folders]
        _SCORERS[key] = window_scorer(bundles, onnx=onnx)
    set_threads(threads)
    return _SCORERS[key]


def score_chunk(folders: tuple[str, ...], options: DetectOptions, threads: int,
                files: list[tuple[int, str]]) -> Iterator[tuple[int, dict | str]]:
    """A chunk's files scored as a local run scores them; yields ``(index, record)`` or ``(index, reason)`` each.

    ``record`` holds arrays only: ``start`` and ``valid`` (samples),
    ``partial`` and ``scores`` (windows x classes), in window order.
    """
    scorer = _scorer(folders, options.onnx, threads)
    local = replace(options, workers=0)  # a task decodes in its own process
    for index, rows in scored_windows(scorer, files, local):
        if isinstance(rows, str):
            yield index, rows
            continue
        rows.sort(key=lambda row: row[0])
        yield index, {"start": np.array([r[0] for r in rows], dtype=np.int64),
                      "valid": np.array([r[1] for r in rows], dtype=np.int64),
                      "partial": np.array([r[2] for r in rows], dtype=bool),
                      "scores": np.stack([r[3] for r in rows]) if rows else np.zeros((0, len(scorer.classes)))}


def _rows(record: dict) -> list[tuple]:
    """A record's windows as :meth:`echoengine.ledger.Recorder.scores` takes them."""
    return list(zip(record["start"].tolist(), record["valid"].tolist(), record["partial"].tolist(),
                    list(record["scores"]), strict=True))


# ---- the driver side --------------------------------------------------------------------------------------------
@contextmanager
def ray_session(options: RayOptions, *, log: Callable[[str], None] = print):
    """Ray for the run: a local instance of ``options.workers`` CPUs (stopped after), or the cluster joined.

    The local instance runs without its dashboard and keeps its logs in a
    temporary folder (removed after); usage statistics are off, so nothing
    leaves the machine. Worker processes use one OpenMP thread.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # Ray's own setting: no report sent anywhere
    settings = {"include_dashboard": False, "logging_level": "WARNING", "configure_logging": True,
                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}}}
    folder = None
    if options.address is None:
        folder = tempfile.mkdtemp(prefix="echoengine-ray-")  # short: Ray's socket paths must fit 107 bytes
        ray.init(num_cpus=options.workers or os.cpu_count() or 1, _temp_dir=folder, **settings)
    else:
        try:
            ray.init(address=options.address, **settings)
        except ConnectionError as exc:
            raise EchoError(f"--ray-address {options.address}: no Ray cluster answers there ({exc}); start one "
                            "with `ray start --head` or give its address") from None
    try:
        log(f"ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs on {len(ray.nodes())} node(s)")
        yield ray
    finally:
        ray.shutdown()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def detect_on_ray(bundles: Sequence[Bundle], paths: Sequence[str | Path], out: str | Path, *,
                  options: DetectOptions, ray_options: RayOptions = RayOptions(),
                  resume: bool = False, overwrite: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Path]:
    """:func:`echoengine.detection.detect` with the files scored on Ray: the same records and outputs.

    Parameters
    ----------
    bundles : sequence of Bundle
        One bundle or an ensemble; their folders must be readable by every worker.
    ray_options : RayOptions
        The cluster (or a local instance) and the tasks' size.

    Returns
    -------
    dict
        Output name -> path, as :func:`echoengine.detection.detect` returns.
    """
    importlib.import_module("ray")  # the distributed extra: when missing, the run stops before the output is claimed

    out = Path(out)
    files = find_audio(paths)
    if not files:
        raise EchoError(f"no audio files in {', '.join(map(str, paths))}")
    scorer = window_scorer(bundles, onnx=options.onnx)  # the checks of a local run, before any work is handed out
    check_species(scorer.classes, options.include, options.exclude)
    check_windows(scorer, options)
    thresholds = detection_thresholds(bundles, options.threshold, scorer.classes)
    records, todo = open_ledger(out, bundles, scorer, files, options=options, resume=resume, overwrite=overwrite,
                                log=log)
    if todo:
        folders = tuple(b.builtin.source if b.builtin else str(b.path.resolve()) for b in bundles)
        rate, n_classes = scorer.config.audio.sample_rate, len(scorer.classes)
        with ray_session(ray_options, log=log) as ray, \
                ledger.Recorder(records, rate=rate, n_classes=n_classes) as recorder:
            for index, result in _run_tasks(ray, folders, todo, options, ray_options, progress=progress):
                path = files[index]
                if isinstance(result, str):
                    log(f"error: {path}: {result}")
                    recorder.error(path, result)
                else:
                    recorder.scores(path, _rows(result))
    return write_outputs(out, files, scorer.classes, scorer.config, options=options, thresholds=thresholds, log=log,
                         taxonomy=bundle_taxonomy(bundles[0]), keep_scores=kept_scores(bundles, options.keep_scores))


def _duration(path: str) -> float:
    try:
        return audio.info(path).duration
    except AudioError:
        return 0.0


def _run_tasks(ray, folders: tuple[str, ...], todo: list[tuple[int, str]], options: DetectOptions,
               ray_options: RayOptions, *, progress: bool) -> Iterator[tuple[int, dict | str]]:
    """Each file's result once, as it arrives, from tasks handed out a few at a time per worker slot."""
    seconds = [_duration(path) for _, path in todo]
    limit = ray_options.tasks_in_flight(cluster_cpus=int(ray.cluster_resources().get("CPU", 1)))
    # a short run still gives each worker slot a few chunks: no slot idles while another scores the last one
    target = min(ray_options.chunk_seconds, max(sum(seconds) / (2 * limit), 1.0))
    chunks = chunk_files(todo, seconds, chunk_seconds=target)
    task = ray.remote(score_chunk).options(num_cpus=ray_options.threads, max_retries=ray_options.max_retries)
    running: dict = {}
    received: set[int] = set()
    bar = tqdm(total=round(sum(seconds)), desc="detect (ray)", unit="s audio", disable=not progress,
               file=sys.stderr)
    length = dict(zip((i for i, _ in todo), seconds, strict=True))
    with bar:
        while chunks or running:
            while chunks and len(running) < limit:
                running[task.remote(folders, options, ray_options.threads, chunks.pop(0))] = True
            ready, _ = ray.wait(list(running), num_returns=1)
            try:
                index, result = ray.get(next(ready[0]))
            except StopIteration:
                del running[ready[0]]
                continue
            except ray.exceptions.RayError as exc:  # retries spent, or the task itself failed (e.g. no bundle)
                detail = " ".join(str(exc).split())[-300:]
                raise EchoError(f"a Ray task failed: {detail}; the files finished so far are recorded: run again "
                                "with --resume") from None
            if index not in received:  # a retried task gives only what was not received; kept safe anyway
                received.add(index)
                bar.update(round(length[index]))
                yield index, result
