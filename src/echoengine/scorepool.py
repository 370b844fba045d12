"""Scoring processes: batches of windows scored side by side, each process on one thread.

On a small CPU shared with other work, one model on several threads is slow:
its threads wait for each other at every layer, and each wait is long when
another process holds a core (``echoengine detect`` of the soundscapes with
2 threads under a load of 4: 33-41 s, against 8-11 s with 1). Processes of
one thread each never wait for each other. :class:`ScoringPool` forks them
from a process that holds the scorer (its model loaded once, its pages
shared), queues batches of windows for whichever child is free first, and
gives the scores back in the order of the batches.

The children are forked (no second import, no second model), so the parent
must not have started threads that its scorer uses: its torch and
onnxruntime sessions run on one thread when it forks (:func:`echoengine.scoring.scoring_threads`).
They exit when their parent does, even when it is killed (they watch it).

Examples
--------
>>> pool = ScoringPool(scorer, processes=2, batch_shape=(16, 144000))  # doctest: +SKIP
>>> for tag, scores in pool.scores((i, windows) for i, windows in enumerate(batches)):  # doctest: +SKIP
...     print(tag, scores.shape)
>>> pool.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait

import numpy as np

from echoengine.errors import EchoError
from echoengine.scoring import set_threads

__all__ = ["ScoringPool", "can_fork", "usable_cores"]

_SPARE = 1  # batches waiting for the first free child, beyond one per child: the next one is always ready


def usable_cores() -> int:
    """Cores this process may run on (its affinity, where the OS says), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def can_fork() -> bool:
    """Whether scoring processes can be forked here (not on Windows)."""
    return "fork" in multiprocessing.get_all_start_methods()


def _serve(tasks, results: Connection, scorer, threads: int, slots: np.ndarray, parent: int) -> None:
    """A child: score the windows of each slot it takes (``(sequence, slot, rows)``) until None or its parent is
    gone."""
    threading.Thread(target=_end_with, args=(parent,), daemon=True).start()
    set_threads(threads)
    while (task := tasks.get()) is not None:
        sequence, slot, rows = task
        try:
            results.send((sequence, scorer.score(scorer.prepare(slots[slot][:rows])), None))
        except Exception as exc:  # sent back as text: the parent raises it in its own words
            results.send((sequence, None, f"{type(exc).__name__}: {exc}"))


def _end_with(parent: int) -> None:
    """In a child: exit when the parent is gone (killed: no message tells it)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


class ScoringPool:
    """``processes`` forked children that score batches of windows with ``scorer``, ``threads`` threads each.

    Windows travel through memory shared with the children (a batch per
    child, and one more waiting for the first that is free), so a child
    slowed by other work takes fewer batches and none waits for another.

    Parameters
    ----------
    scorer : TorchScorer or GraphScorer
        With its model loaded (``scorer.load()``) before the fork, so that the children share it.
    processes : int
    batch_shape : tuple of int
        The shape of the largest batch of windows: (windows, samples), float32.
    threads : int
        Threads of each child.
    """

    def __init__(self, scorer, processes: int, batch_shape: tuple[int, int], threads: int = 1) -> None:
        if not can_fork():
            raise EchoError("scoring processes need the fork start method (not available on this system)")
        context = multiprocessing.get_context("fork")
        slots = processes + _SPARE
        self._memory = mmap.mmap(-1, int(np.prod(batch_shape)) * 4 * slots)  # anonymous, shared with the fork
        self._slots = np.frombuffer(self._memory, dtype=np.float32).reshape(slots, *batch_shape)
        self._tasks = context.SimpleQueue()
        self._children: list[tuple[object, Connection]] = []
        try:
            for _ in range(processes):
                reader, writer = context.Pipe(duplex=False)
                child = context.Process(target=_serve, daemon=True,
                                        args=(self._tasks, writer, scorer, threads, self._slots, os.getpid()))
                child.start()
                writer.close()
                self._children.append((child, reader))
        except BaseException:
            self.close()
            raise

    def scores(self, batches: Iterable[tuple[object, np.ndarray | None]]) -> Iterator[tuple[object, np.ndarray | None]]:
        """``(tag, scores)`` of each ``(tag, windows)``, in order; windows None pass through with scores None."""
        free = list(range(len(self._slots)))
        pending: dict[int, list] = {}  # sequence -> [tag, scores, done, slot]
        sent = given = 0
        source, exhausted = iter(batches), False
        while pending or not exhausted:
            while not exhausted and free:
                try:
                    tag, windows = next(source)
                except StopIteration:
                    exhausted = True
                    break
                pending[sent] = [tag, None, windows is None, None]
                if windows is not None:
                    slot = pending[sent][3] = free.pop()
                    self._slots[slot][: len(windows)] = windows  # a batch may be shorter than a slot
                    self._tasks.put((sent, slot, len(windows)))
                sent += 1
            while given in pending and pending[given][2]:
                tag, result = pending.pop(given)[:2]
                given += 1
                yield tag, result
            if given in pending:
                free += self._receive(pending)

    def _receive(self, pending: dict[int, list]) -> list[int]:
        """Wait for results, file them under their batches; the slots they free."""
        readers = {reader: child for child, reader in self._children}
        freed = []
        for ready in wait([*readers, *(child.sentinel for child in readers.values())]):
            if ready not in readers:
                continue  # a child's end: its pipe says so below, or it died
            try:
                sequence, result, error = ready.recv()
            except (EOFError, OSError):
                raise EchoError("a scoring process ended unexpectedly (out of memory?)") from None
            if error is not None:
                raise EchoError(f"a scoring process failed: {error}")
            entry = pending[sequence]
            entry[1], entry[2] = result, True
            freed.append(entry[3])
        if not freed and not all(child.is_alive() for child in readers.values()):
            raise EchoError("a scoring process ended unexpectedly (out of memory?)")
        return freed

    def close(self) -> None:
        """Stop the children (after the batch each is scoring)."""
        for _ in self._children:
            with contextlib.suppress(OSError):
                self._tasks.put(None)
        for child, reader in self._children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
            reader.close()
        self._children = []

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
