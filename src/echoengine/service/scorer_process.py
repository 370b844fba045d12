"""Scoring in a process of its own, so that a server's HTTP side and its scoring do not share one GIL.

The worker thread (:mod:`echoengine.service.worker`) still claims, settles
and publishes; only :meth:`ServedModel.events_of_many` runs in the child,
which loads the bundle once (in PyTorch, or its exported graph) and gives
back each recording's events and top species. The child is started with
``spawn`` (no copy of the server's threads, sockets or store lock) and ends
with the server, even one killed by ``kill -9``: it exits within a second of
being left by its parent.

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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from echoengine.detection import DetectOptions

__all__ = ["ScorerProcess"]

_SERVED = None  # the child's ServedModel


def _end_with(parent: int) -> None:
    """In the child: exit when the server is gone (its pipes may stay open in the child, so no EOF tells it)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _watch_parent() -> None:
    """In the child, once: end with the server."""
    threading.Thread(target=_end_with, args=(os.getppid(),), daemon=True).start()


def _load(bundle: str, options: DetectOptions, thresholds: np.ndarray) -> None:
    """In the child: load the bundle and keep a ServedModel without a database row.

    Run as a task, not as the pool's initializer, so that a bundle that
    cannot be loaded is the server's one-line EchoError, not a broken pool.
    """
    global _SERVED
    from echoengine.api import load_bundles
    from echoengine.errors import EchoError
    from echoengine.scoring import window_scorer
    from echoengine.service.served import ServedModel

    try:
        scorer = window_scorer(load_bundles(bundle, onnx=options.onnx), onnx=options.onnx)
    except EchoError as exc:  # its own arguments may not survive the trip back: the message does
        raise EchoError(str(exc)) from None
    _SERVED = ServedModel(scorer, thresholds, options, row=None)


def _events_of_many(paths: list[str]) -> list[tuple[int, tuple | str]]:
    return list(_SERVED.events_of_many(paths))


class ScorerProcess:
    """A child process that scores recordings with the served bundle (see the module's text).

    Parameters
    ----------
    bundle : path
        The bundle (or CV folder) served.
    options : DetectOptions
        The served options (``onnx`` included).
    thresholds : ndarray
        Each class's threshold, as the server chose them.
    """

    def __init__(self, bundle: str | Path, options: DetectOptions, thresholds: np.ndarray) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_watch_parent)
        try:  # the bundle is loaded now, not at the first upload
            self._pool.submit(_load, str(bundle), options, np.asarray(thresholds)).result()
        except BaseException:
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise

    def events_of_many(self, paths: list[str | Path]) -> list[tuple[int, tuple | str]]:
        """``(index, (events, top species))`` or ``(index, reason)`` of each recording, scored in the child."""
        return self._pool.submit(_events_of_many, [str(p) for p in paths]).result()

    def stop(self) -> None:
        """End the child (after the recordings it is scoring)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
