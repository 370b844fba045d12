"""Scoring in processes of their own, so that a server's HTTP side and its scoring do not share one GIL.

The worker thread (:mod:`echoengine.service.worker`) still claims, settles
and publishes; only :meth:`ServedModel.events_of_many` runs in the children,
each of which loads the bundle once (in PyTorch, or its exported graph) and
gives back each recording's events and top species. Several children score
claims side by side, each with its share of the cores as threads (on 2
cores: 2 processes of 1 thread). That beats one process with all the
threads here: a model's threads wait for each other at every layer, and
each wait is long when the server's own process takes a core for an HTTP
request (see the README's service benchmark). The children are started
with ``spawn`` (no copy of the server's threads, sockets or store lock) and
end with the server, even one killed by ``kill -9``: each exits within a
second of being left by its parent.

Examples
--------
>>> process = ScorerProcess("bundle", DetectOptions(threshold=0.3), thresholds)  # doctest: +SKIP
>>> results = process.events_of_many(["store/audio/ab/ab12....flac"])  # doctest: +SKIP
>>> process.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from echoengine.detection import DetectOptions
from echoengine.errors import EchoError

__all__ = ["ScorerProcess", "default_processes"]

_SERVED = None  # the child's ServedModel
_FAILED: str | None = None  # or why the child could not load it


def default_processes(cores: int | None = None) -> int:
    """Scoring processes for a machine: 2 where there are at least 2 cores, else 1.

    Examples
    --------
    >>> default_processes(1), default_processes(2), default_processes(16)
    (1, 2, 2)
    """
    return 2 if (cores if cores is not None else os.cpu_count() or 1) >= 2 else 1


def _end_with(parent: int) -> None:
    """In a child: exit when the server is gone (its pipes may stay open in the child, so no EOF tells it)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _start_child(parent: int, bundle: str, options: DetectOptions, thresholds: np.ndarray, threads: int) -> None:
    """A child's initializer: end with the server, use ``threads`` threads, load the bundle.

    A bundle that cannot be loaded is remembered, not raised (that would
    break the pool): each task then raises it as the server's one-line EchoError.
    """
    global _SERVED, _FAILED
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    from echoengine.api import load_bundles
    from echoengine.scoring import set_threads, window_scorer
    from echoengine.service.served import ServedModel
    from echoengine.taxonomy import bundle_taxonomy

    set_threads(threads)
    try:
        bundles = load_bundles(bundle, onnx=options.onnx)
        scorer = window_scorer(bundles, onnx=options.onnx)
    except Exception as exc:  # its own arguments may not survive the trip back: the message does
        _FAILED = str(exc) if isinstance(exc, EchoError) else f"{bundle}: {type(exc).__name__}: {exc}"
        return
    set_threads(threads)  # torch, imported by the load
    _SERVED = ServedModel(scorer, thresholds, options, row=None, taxonomy=bundle_taxonomy(bundles[0]))
    _warm_up(scorer, options)


def _warm_up(scorer, options: DetectOptions) -> None:
    """Score one batch of silence: the model's first call (kernels chosen, buffers made) before the first upload's."""
    windows = np.zeros((options.batch_size, scorer.config.window_samples), dtype=np.float32)
    scorer.score(scorer.prepare(windows))


def _ready() -> None:
    if _SERVED is None:
        raise EchoError(_FAILED or "the scoring process has no model")


def _events_of_many(paths: list[str]) -> list[tuple[int, tuple | str]]:
    _ready()
    return list(_SERVED.events_of_many(paths))


class ScorerProcess:
    """Child processes that score recordings with the served bundle (see the module's text).

    Parameters
    ----------
    bundle : path
        The bundle (or CV folder) served.
    options : DetectOptions
        The served options (``onnx`` included).
    thresholds : ndarray
        Each class's threshold, as the server chose them.
    processes : int, optional
        Children scoring side by side (default :func:`default_processes`);
        each has ``cores // processes`` threads (at least 1) and its own copy of the model.
    """

    def __init__(self, bundle: str | Path, options: DetectOptions, thresholds: np.ndarray,
                 processes: int | None = None) -> None:
        self.processes = processes or default_processes()
        threads = max(1, (os.cpu_count() or 1) // self.processes)
        self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_child,
                                         initargs=(os.getpid(), str(bundle), options, np.asarray(thresholds),
                                                   threads))
        try:  # every child loads the bundle now, not at the first upload
            for task in [self._pool.submit(_ready) for _ in range(self.processes)]:
                task.result()
        except BaseException:
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise

    @property
    def depth(self) -> int:
        """Claims worth handing over at once: one per child, and one waiting for the first free child."""
        return self.processes + 1

    def events_of_many(self, paths: list[str | Path]) -> list[tuple[int, tuple | str]]:
        """``(index, (events, top species))`` or ``(index, reason)`` of each recording, scored in a child."""
        return self.submit(paths).result()

    def submit(self, paths: list[str | Path]) -> Future:
        """Start scoring recordings in a free child; the future of :meth:`events_of_many`'s list.

        Work submitted while every child is busy starts the moment one is free
        (the worker hands over its next claims before it stores the detections of the last one).
        """
        return self._pool.submit(_events_of_many, [str(p) for p in paths])

    def stop(self) -> None:
        """End the children (after the recordings they are scoring)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
