"""Writing files whole: the one temporary-then-rename helper every module uses.

A file is written under a temporary name beside it (``NAME.tmp``) and then
renamed into place with :func:`os.replace`, which is atomic on one file
system: a reader, or a run killed at any moment, sees the old file or the new
one, never half of one. When the writer fails, the temporary file is removed
and the old file is left as it was.

This is the lowest layer of the package: it imports only the standard library.

Examples
--------
>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "notes.txt"
>>> _ = write_atomic(path, lambda temporary: temporary.write_text("frog\\n"))
>>> path.read_text()
'frog\\n'
>>> temporary_path(path).name
'notes.txt.tmp'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMPORARY_SUFFIX", "temporary_path", "write_atomic", "write_csv_atomic", "write_text_atomic"]

#: Appended to a file's name while it is written (bundle and ledger clean-up recognise it).
TEMPORARY_SUFFIX = ".tmp"

# The compressions pandas infers from a file's name (longest suffix first): the temporary name hides the
# suffix, so :func:`write_csv_atomic` infers it from the final name.
_COMPRESSIONS = ((".tar.gz", "tar"), (".tar.bz2", "tar"), (".tar.xz", "tar"), (".tar", "tar"), (".gz", "gzip"),
                 (".bz2", "bz2"), (".zip", "zip"), (".xz", "xz"), (".zst", "zstd"))


def temporary_path(path: str | Path) -> Path:
    """The name ``path`` is written under before it is renamed into place: ``NAME.tmp`` beside it.

    Examples
    --------
    >>> temporary_path("bundle/weights.pt").as_posix()
    'bundle/weights.pt.tmp'
    """
    path = Path(path)
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary path)``, then rename the temporary file to ``path``.

    Parameters
    ----------
    path : str or Path
        The file to write; its folder must exist.
    write : callable
        Writes the whole file at the path it is given (its return value is ignored).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    Exception
        Whatever ``write`` raises, after the temporary file is removed: the old
        file at ``path``, if any, is left intact.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "table.csv"
    >>> _ = write_atomic(path, lambda temporary: temporary.write_text("a,b\\n"))
    >>> path.read_text()
    'a,b\\n'
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` whole (see :func:`write_atomic`).

    Examples
    --------
    >>> import tempfile
    >>> path = write_text_atomic(Path(tempfile.mkdtemp()) / "metrics.json", '{"accuracy": 0.9}\\n')
    >>> path.read_text()
    '{"accuracy": 0.9}\\n'
    """
    return write_atomic(path, lambda temporary: temporary.write_text(text, encoding=encoding))


def _compression(path: Path) -> dict | None:
    """The compression pandas infers from ``path``'s name (an archive's one member named after the file), or None."""
    for suffix, method in _COMPRESSIONS:
        if path.name.endswith(suffix):
            options = {"method": method}
            if method in ("zip", "tar"):
                options["archive_name"] = path.name.removesuffix(suffix)
            if suffix.startswith(".tar."):
                options["mode"] = f"w:{suffix.rpartition('.')[2]}"
            return options
    return None


def write_csv_atomic(path: str | Path, table, **to_csv_options) -> Path:
    """Write ``table.to_csv(path, **to_csv_options)`` whole (see :func:`write_atomic`).

    Parameters
    ----------
    path : str or Path
        The file to write; its folder must exist. A compression suffix
        (``.gz``, ``.zip``, ...) compresses it, as ``to_csv`` does, unless
        ``compression`` is given.
    table : object with a ``to_csv`` method
        A pandas DataFrame, typically (this module imports only the standard library).
    **to_csv_options
        Passed to ``table.to_csv`` (``index=False``, ``lineterminator="\\n"``, ...).

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> import pandas as pd
    >>> path = write_csv_atomic(Path(tempfile.mkdtemp()) / "splits.csv", pd.DataFrame({"path": ["a.wav"]}),
    ...                         index=False)
    >>> path.read_text()
    'path\\na.wav\\n'
    """
    path = Path(path)
    if "compression" not in to_csv_options:
        compression = _compression(path)
        if compression is not None:
            to_csv_options["compression"] = compression
    return write_atomic(path, lambda temporary: table.to_csv(temporary, **to_csv_options))
