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
* the clip (start and length) and the variant index (-1: not augmented).

The store is :mod:`diskcache` (SQLite + files): safe with several DataLoader
worker processes, with a size limit and least-recently-stored eviction.
Images are stored as one channel (the others are copies) quantised to
uint16, which keeps them exact to 8e-6 on the [0, 1] scale at a quarter of
float32's size for three channels.

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

import hashlib
import os
from pathlib import Path

import diskcache
import numpy as np

from echoengine.config import EchoConfig
from echoengine.features import FEATURES_VERSION

__all__ = ["FeatureCache", "file_identity"]

_FORMAT_VERSION = 1
_QUANT = 65535.0


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
        ``data.cache_size_gb`` and ``data.cache_identity`` set the limit and
        the file identity.
    """

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

    @property
    def store(self) -> diskcache.Cache:
        # Opened lazily, so that each DataLoader worker opens its own connection.
        if self._store is None:
            self._store = diskcache.Cache(
                str(self.directory), size_limit=self._size_limit, eviction_policy="least-recently-stored"
            )
        return self._store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def key(self, path: str | os.PathLike, *, start: int, length: int, variant: int) -> str:
        """The cache key of one clip of one file; ``variant=-1`` means not augmented."""
        identity = file_identity(path, mode="stat")  # cheap: looked up every time
        if self.identity_mode == "content":  # hashed once per version of the file
            if identity not in self._identities:
                self._identities[identity] = file_identity(path, mode="content")
            identity = self._identities[identity]
        fingerprint = self._clean_fingerprint if variant < 0 else self._augmented_fingerprint
        return f"v{_FORMAT_VERSION}.{FEATURES_VERSION}|{fingerprint}|{identity}|{start}|{length}|{variant}"

    def get(self, key: str) -> np.ndarray | None:
        """The stored image (float32, one channel) or None."""
        stored = self.store.get(key)
        if stored is None:
            return None
        return stored.astype(np.float32) / _QUANT

    def put(self, key: str, image: np.ndarray) -> None:
        """Store a one-channel image with values in [0, 1]."""
        quantised = np.rint(np.clip(image, 0.0, 1.0) * _QUANT).astype(np.uint16)
        self.store.set(key, quantised)

    def __len__(self) -> int:
        return len(self.store)

    def volume(self) -> int:
        """Bytes used on disk."""
        return self.store.volume()

    def clear(self) -> None:
        """Remove every entry."""
        self.store.clear()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
