"""A persistent cache of computed model inputs (clean and augmented variants).

Entries are keyed by

* the file's identity: its resolved path with size and modification time
  (``"stat"``) or a hash of its bytes (``"content"``), so an edited file is
  never served stale features;
* the fingerprint of every config section its features depend on (audio,
  front end, and augmentation for augmented variants), so changing any
  value misses the old entries instead of reusing them (the Echo pipeline
  had to clear its cache by hand), and the version of the feature code
  (:data:`echoengine.features.FEATURES_VERSION`);
* the clip (start and length) and the variant index (-1: not augmented; -2: cut from a streamed decode).

The store is :mod:`diskcache` (SQLite + files): safe with several DataLoader
worker processes, with a size limit and least-recently-stored eviction.
Images are stored as one channel (the others are copies) quantised to
uint16, which keeps them exact to 8e-6 on the [0, 1] scale at a quarter of
float32's size for three channels. A computed image is rounded the same way
before it is used (:func:`quantise_image`), cached or not, so a run gives the
same model with a cold cache, a warm one or none.

Nothing read from the cache folder is ever unpickled: values are stored as
bytes (a BLAKE2 checksum, then the array in ``.npy`` format, read without
pickle), and the store's :class:`diskcache.Disk` refuses the pickle mode of
keys and values (which an edited ``cache.db`` could ask for), file names
outside the cache's own layout, and any value that is not bytes.

A damaged cache never stops a run: an entry that is unreadable (a truncated,
garbage or altered value file, a pickle, a missing file) is dropped and
recomputed, with one warning per cache naming its folder; a cache that cannot
be opened or used at all (a garbage ``cache.db``, a folder that cannot be
written) makes the run go on uncached, with one warning naming the folder
(delete the folder, or choose another, to cache again).

Examples
--------
>>> import tempfile, numpy as np
>>> from echoengine.config import EchoConfig
>>> cache = FeatureCache(tempfile.mkdtemp(), EchoConfig())
>>> key = cache.key(__file__, start=0, length=10, variant=-1)
>>> cache.get(key) is None
True
>>> cache.put(key, np.full((4, 4), 0.5, dtype="float32"))
>>> round(float(cache.get(key)[0, 0]), 4)
0.5
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import re
import sqlite3
from pathlib import Path

import diskcache
import numpy as np

from echoengine.config import EchoConfig
from echoengine.features import FEATURES_VERSION

__all__ = ["FeatureCache", "feature_cache", "file_identity", "quantise_image"]

logger = logging.getLogger("echoengine")

_FORMAT_VERSION = 2  # 2: checksummed .npy bytes, never pickles (1 stored pickles)
_QUANT = 65535.0
_DIGEST = 16
# diskcache's own value files: two levels of folders, then 28 hex digits (Disk.filename)
_warned: set[tuple[str, str]] = set()  # (folder, kind) of the warnings logged by this process
_VALUE_FILE = re.compile(r"[0-9a-f]{2}[/\\][0-9a-f]{2}[/\\][0-9a-f]{28}\.val")


class UnsafeEntryError(ValueError):
    """A cache row asks for something the cache never stores: a pickle, or a file outside its folder."""


class _NoPickleDisk(diskcache.Disk):
    """A :class:`diskcache.Disk` that stores bytes only and never unpickles a key or a value.

    diskcache records each row's storage mode in ``cache.db``; a row edited
    to the pickle mode (or to a file name outside the cache's layout) is
    refused here, whatever the database says.
    """

    def __init__(self, directory, min_file_size=0, pickle_protocol=0, **ignored) -> None:
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=pickle_protocol)
        self._ready = True

    def __setattr__(self, name: str, value) -> None:
        # ``disk_*`` rows of the Settings table set attributes: never the folder or a method
        if getattr(self, "_ready", False) and name not in ("min_file_size", "pickle_protocol"):
            raise UnsafeEntryError(f"the cache setting disk_{name} is not one of diskcache's")
        super().__setattr__(name, value)

    def put(self, key):
        if not isinstance(key, (str, bytes)):
            raise TypeError(f"cache keys are strings, got {type(key).__name__}")
        return super().put(key)

    def get(self, key, raw):
        if not raw:
            raise UnsafeEntryError("a pickled key")
        return super().get(key, raw)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if type(value) is not bytes:
            raise TypeError(f"cache values are bytes, got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            pickled = mode == diskcache.core.MODE_PICKLE
            raise UnsafeEntryError("a pickled value, never read" if pickled else f"storage mode {mode!r}")
        if filename is not None and not _VALUE_FILE.fullmatch(str(filename)):
            raise UnsafeEntryError(f"value file name {filename!r} outside the cache's layout")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path) -> None:
        if _VALUE_FILE.fullmatch(str(file_path)):  # never delete a file an edited row names elsewhere
            super().remove(file_path)


# The largest stored size limit honoured (data.cache_size_gb's own bound).
_MAX_SIZE_LIMIT = 100_000 * 2**30


def _check_settings(directory: Path) -> int:
    """Refuse a ``cache.db`` whose Settings table holds rows of its own: diskcache sets each as an attribute.

    Returns the size limit stored there (0 when none), so that a command
    opening the cache with the default limit does not shrink a larger one.
    """
    path = directory / diskcache.core.DBNAME
    if not path.is_file():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            settings = dict(db.execute("SELECT key, value FROM Settings"))
        except sqlite3.OperationalError:  # no Settings table (yet)
            return 0
    unknown = set(settings) - set(diskcache.DEFAULT_SETTINGS) - set(diskcache.core.METADATA)
    if unknown:
        raise UnsafeEntryError(f"settings that are not diskcache's: {', '.join(sorted(map(str, unknown)))}")
    stored = settings.get("size_limit")
    return stored if type(stored) is int and 0 < stored <= _MAX_SIZE_LIMIT else 0


def _encode(array: np.ndarray) -> bytes:
    """A checksum, then the array in ``.npy`` format."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    body = buffer.getvalue()
    return hashlib.blake2b(body, digest_size=_DIGEST).digest() + body


def _decode(payload, dtype: np.dtype) -> np.ndarray:
    """The array of :func:`_encode`'s bytes; ValueError when they are anything else."""
    if type(payload) is not bytes or len(payload) < _DIGEST:
        raise ValueError(f"not an array entry ({type(payload).__name__})")
    body = payload[_DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != payload[:_DIGEST]:
        raise ValueError("checksum mismatch: truncated or altered")
    stream = io.BytesIO(body)
    if np.lib.format.read_magic(stream) != (1, 0):
        raise ValueError("not a version 1.0 .npy array")
    shape, fortran, stored = np.lib.format.read_array_header_1_0(stream)
    data = stream.read()
    if stored != dtype or fortran or len(shape) != 2 or len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"unexpected array {stored}{list(shape)} of {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _quantise(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * _QUANT).astype("<u2")


def _dequantise(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / np.float32(_QUANT)


def quantise_image(image: np.ndarray) -> np.ndarray:
    """An image exactly as the cache stores and returns it: clipped to [0, 1], rounded to 1/65535, float32.

    Use it on every computed image, so that the values a run uses do not
    depend on whether they came from the cache.

    Examples
    --------
    >>> image = quantise_image(np.array([[0.1, 2.0]], dtype=np.float32))
    >>> image.dtype.name, float(image[0, 1]), abs(float(image[0, 0]) - 0.1) < 1e-5
    ('float32', 1.0, True)
    """
    return _dequantise(_quantise(image))


def feature_cache(config: EchoConfig) -> FeatureCache | None:
    """The cache at ``config.data.cache_dir``, or None when that is empty (caching off)."""
    return FeatureCache(config.data.cache_dir, config) if config.data.cache_dir else None


def file_identity(path: str | os.PathLike, *, mode: str = "stat") -> str:
    """A string that changes whenever the file's content may have changed.

    Parameters
    ----------
    mode : {"stat", "content"}
        ``"stat"``: resolved path, size and modification time (cheap).
        ``"content"``: a BLAKE2 hash of the bytes (robust to copies and
        touched files, costs a read).
    """
    if mode == "content":
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return "content:" + digest.hexdigest()
    stat = os.stat(path)
    return f"stat:{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


class FeatureCache:
    """Model inputs on disk, keyed by file, config and variant.

    Parameters
    ----------
    directory : str or Path
    config : EchoConfig
        Its audio, front-end and augmentation sections enter every key; its
        ``data.cache_size_gb`` and ``data.cache_identity`` set the limit (a
        larger one already stored in the folder is kept) and the file identity.

    Notes
    -----
    The folder is opened here. When it cannot be (a garbage ``cache.db``, a
    folder that cannot be created or written), or stops working later, the
    cache logs a warning naming the folder and acts as an empty cache that
    keeps nothing: the run goes on uncached. An unreadable entry is dropped
    and recomputed. Each kind of warning is logged once per folder and
    process (further ones at debug level), however many caches open it.
    """

    #: The dtype of the stored arrays.
    stored_dtype = np.dtype("<u2")

    def __init__(self, directory: str | Path, config: EchoConfig) -> None:
        self.directory = Path(directory)
        self.identity_mode = config.data.cache_identity
        self._clean_fingerprint = config.fingerprint("audio", "frontend")
        # mixup mixes batches after the cache, and `variants` only says how many are drawn
        self._augmented_fingerprint = config.fingerprint(
            "audio", "frontend", "augment",
            ignore=("augment.variants", "augment.mixup_p", "augment.mixup_alpha", "augment.embedding_variants"),
        )
        self._size_limit = int(config.data.cache_size_gb * 2**30)
        self._store: diskcache.Cache | None = None
        self._identities: dict[str, str] = {}
        self.broken = False  # True: the folder cannot be used, the cache keeps nothing
        if self._open() is not None:
            self._store.close()  # no connection is carried into forked DataLoader workers

    def _open(self) -> diskcache.Cache | None:
        """The store, opened on first use in each process; None once the folder proved unusable."""
        if self._store is None and not self.broken:
            try:
                stored_limit = _check_settings(self.directory)
                # every setting given, so that none is taken from the database; the limit never shrinks
                settings = {**diskcache.DEFAULT_SETTINGS, "size_limit": max(self._size_limit, stored_limit),
                            "eviction_policy": "least-recently-stored"}
                self._store = diskcache.Cache(str(self.directory), disk=_NoPickleDisk, **settings)
            except Exception as error:  # any failure to open an optional cache: go on without it
                self._give_up(error, "cannot be opened")
        return self._store

    @property
    def store(self) -> diskcache.Cache:
        """The underlying :class:`diskcache.Cache` (opened lazily, so that each DataLoader worker opens its own)."""
        store = self._open()
        if store is None:
            raise RuntimeError(f"{self.directory}: the feature cache is unusable")
        return store

    def _warn(self, kind: str, message: str, *args) -> None:
        """Log a warning of this kind once per folder and process; later ones at debug level."""
        first = (str(self.directory), kind) not in _warned
        _warned.add((str(self.directory), kind))
        logger.log(logging.WARNING if first else logging.DEBUG, message, self.directory, *args)

    def _give_up(self, error: BaseException, what: str) -> None:
        self._warn("unusable", "feature cache %s %s (%s); going on without it: delete the folder or choose "
                   "another to cache again", what, _one_line(error))
        self.broken = True
        if self._store is not None:
            with contextlib.suppress(sqlite3.Error):
                self._store.close()
        self._store = None

    def _drop(self, key: str, error: BaseException) -> None:
        """Remove an unreadable entry, so that it is recomputed."""
        self._warn("entry", "feature cache %s: dropped an unreadable entry (%s) to recompute it; any further "
                   "ones are dropped without a warning", _one_line(error))
        try:
            self.store.delete(key)
        except (sqlite3.Error, OSError, diskcache.Timeout) as failure:
            self._give_up(failure, "cannot be written")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def key(self, path: str | os.PathLike, *, start: int, length: int, variant: int) -> str:
        """The cache key of one clip of one file; a negative ``variant`` is not augmented (-1: read as a range)."""
        identity = file_identity(path, mode="stat")  # cheap: looked up every time
        if self.identity_mode == "content":  # hashed once per version of the file
            if identity not in self._identities:
                self._identities[identity] = file_identity(path, mode="content")
            identity = self._identities[identity]
        fingerprint = self._clean_fingerprint if variant < 0 else self._augmented_fingerprint
        return f"v{_FORMAT_VERSION}.{FEATURES_VERSION}|{fingerprint}|{identity}|{start}|{length}|{variant}"

    def _to_stored(self, value: np.ndarray) -> np.ndarray:
        return _quantise(value)

    def _from_stored(self, stored: np.ndarray) -> np.ndarray:
        return _dequantise(stored)

    def get(self, key: str) -> np.ndarray | None:
        """The stored image (float32, one channel, as :func:`quantise_image` gives it) or None.

        None too for an unreadable entry (dropped) and a cache that is unusable.
        """
        store = self._open()
        if store is None:
            return None
        try:
            payload = store.get(key)
        except sqlite3.DatabaseError as error:
            self._give_up(error, "cannot be read")
            return None
        except ValueError as error:  # UnsafeEntryError: a pickle, or a file outside the cache
            self._drop(key, error)
            return None
        if payload is None:
            return None
        try:
            return self._from_stored(_decode(payload, self.stored_dtype))
        except ValueError as error:
            self._drop(key, error)
            return None

    def put(self, key: str, image: np.ndarray) -> None:
        """Store a one-channel image with values in [0, 1] (rounded as by :func:`quantise_image`)."""
        stored = self._to_stored(image)
        if stored.ndim != 2:
            raise ValueError(f"the feature cache stores 2-D arrays, got shape {stored.shape}")
        store = self._open()
        if store is None:
            return
        payload = _encode(stored)
        try:
            store.set(key, payload)
        except (sqlite3.Error, OSError, diskcache.Timeout) as error:
            self._give_up(error, "cannot be written")

    def __len__(self) -> int:
        store = self._open()
        return 0 if store is None else len(store)

    def volume(self) -> int:
        """Bytes used on disk (0 for an unusable cache)."""
        store = self._open()
        return 0 if store is None else store.volume()

    def clear(self) -> None:
        """Remove every entry."""
        store = self._open()
        if store is not None:
            store.clear()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
