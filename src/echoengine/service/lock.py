"""One server per store: an exclusive lock on ``STORE/serve.lock``, held for the server's life.

A server puts back the recordings an earlier server left ``running`` when it
starts (:meth:`echoengine.service.worker.Worker.requeue`): a second server on
the same store would take them from the first one while it scores them. So
:func:`lock_store` takes an exclusive, non-blocking ``flock`` on the store's
lock file before the database is opened, and refuses a second server with a
one-line :class:`~echoengine.errors.EchoError`. The operating system drops
the lock when its process ends, however it ends (``kill -9`` included): a
killed server never leaves a stale lock. The file holds the holder's process
id, for the refusal's message.

Examples
--------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> lock = lock_store(folder)
>>> lock_store(folder)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
echoengine.errors.EchoError: --store ...: another server uses this store (process ...); stop it, or give ...
>>> lock.release()
>>> lock_store(folder).release()
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO

from echoengine.errors import EchoError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

__all__ = ["LOCK_FILE", "StoreLock", "lock_store"]

logger = logging.getLogger("echoengine.service")
LOCK_FILE = "serve.lock"


class StoreLock:
    """A held store lock; :meth:`release` (or the process's end) lets another server take the store."""

    def __init__(self, path: Path, handle: IO[str] | None) -> None:
        self.path, self._handle = path, handle

    @property
    def held(self) -> bool:
        """Whether this lock is still held."""
        return self._handle is not None

    def release(self) -> None:
        """Let the store go (closing the file drops the lock); calling it again does nothing."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def lock_store(folder: str | Path) -> StoreLock:
    """Take the store's lock (``folder`` must exist), or refuse at once when another server holds it.

    Raises
    ------
    EchoError
        Another server uses the store, or its lock file cannot be opened or locked.
    """
    path = Path(folder) / LOCK_FILE
    if fcntl is None:
        logger.warning("no file locks on this system: nothing stops a second server on --store %s", folder)
        return StoreLock(path, None)
    try:  # held open for the server's life; not truncated before it is ours: it names the holder
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise EchoError(f"--store {folder}: cannot open its lock file {LOCK_FILE} ({exc.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read(20).strip()
        handle.close()
        raise EchoError(f"--store {folder}: another server uses this store{f' (process {holder})' if holder else ''}"
                        "; stop it, or give this one its own --store") from None
    except OSError as exc:
        handle.close()
        raise EchoError(f"--store {folder}: cannot lock {path} ({exc.strerror})") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return StoreLock(path, handle)
