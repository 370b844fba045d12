"""Window embeddings of a frozen pretrained embedder, as a dataset for training a head.

An item is a clip, as for CNNs: a random (augmented) crop of ``clip_seconds``
in training, a fixed window in evaluation (of the length recordings are scored
in: BirdNET's 3 s for BirdNET, :attr:`EchoConfig.window_seconds`). The clip is
cut into the embedder's windows (BirdNET: 3 s, hop = window, the last one
padded), and the item is their embeddings, shape (windows, embedding size). Embeddings are
computed in batches, for all the items of a dataset at once
(:meth:`EmbeddingDataset.precompute`), and cached on disk per (file, clip,
variant, embedder), so each is computed once; training draws one of
``augment.embedding_variants`` cached variants per clip and epoch.

Examples
--------
>>> from echoengine.config import EchoConfig
>>> cfg = EchoConfig().replace(model={"embedder": "birdnet", "head": "linear"})
>>> embedder_windows(cfg.audio.clip_samples, window=144000)
[0, 144000]
>>> embedder_windows(cfg.audio.clip_samples, window=144000, hop=48000)
[0, 48000, 96000]
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from echoengine.bundle import load_bundle
from echoengine.cache import FeatureCache
from echoengine.clips import fixed_windows, window_starts
from echoengine.config import EchoConfig, ModelConfig
from echoengine.dataset import BoxLabels, ClipDataset
from echoengine.errors import AudioError, EchoError
from echoengine.features import MelFrontend
from echoengine.kinds import embedder_kind
from echoengine.layout import BundleFiles
from echoengine.models.embedders import BirdNETEmbedder, BirdNETTorchEmbedder, block_order
from echoengine.photodata import photo_dataset

__all__ = ["CNNEmbedder", "EmbeddingCache", "EmbeddingDataset", "MultiLabelEmbeddingDataset", "birdnet_tflite_embedder",
           "birdnet_torch_embedder", "build_embedder", "clip_windows", "cnn_embedder", "config_embedder", "embed_clips",
           "embedder_windows", "embedding_dataset", "embedding_hop_samples", "make_dataset"]


def embedder_windows(clip_samples: int, *, window: int, hop: int = 0) -> list[int]:
    """Start samples of the embedder windows covering a clip (hop 0: the window; the last one padded)."""
    return [int(s) for s in window_starts(clip_samples, length=window, hop=hop or window)]


def clip_windows(clips: np.ndarray, *, window: int, hop: int = 0) -> np.ndarray:
    """The embedder windows of clips (n, clip samples) -> (n, windows, window samples)."""
    return np.stack([fixed_windows(clip, length=window, hop=hop or window)[0] for clip in clips])


def embedding_hop_samples(config: EchoConfig, window: int) -> int:
    """The hop of the embedder windows in samples (the window when ``model.embedding_hop`` is 0)."""
    return round(config.model.embedding_hop * config.audio.sample_rate) or window



class CNNEmbedder:
    """The pooled features of an echoengine CNN bundle, over its own clips and front end.

    Parameters
    ----------
    bundle : str or Path
        A bundle written by ``echoengine train``.
    """

    name = "cnn"

    def __init__(self, bundle: str | Path, *, batch_size: int = 16) -> None:
        loaded = load_bundle(bundle)
        if not hasattr(loaded.model, "features"):  # a per-node model of a taxonomy: one network per node
            raise EchoError(f"--embedder cnn:{bundle}: a {loaded.config.model.kind.name} bundle with "
                            f"--hierarchy {loaded.config.taxonomy.hierarchy} has no single network to embed with; use "
                            "a flat bundle (or one of its nodes/ bundles)")
        self._torch = torch
        self.model = loaded.model
        self.frontend = MelFrontend.from_config(loaded.config)
        self.sample_rate = loaded.config.audio.sample_rate
        self.window_seconds = loaded.config.audio.clip_seconds
        self.embedding_size = loaded.model.backbone.num_features
        self.batch_size = batch_size
        self.channels = loaded.config.frontend.image_channels
        weights = hashlib.blake2b(BundleFiles(bundle).weights.read_bytes(), digest_size=8).hexdigest()
        self.identity = f"cnn-{weights}-{loaded.config.fingerprint('audio', 'frontend')}"

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_seconds)

    def embed(self, waveforms: np.ndarray) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(waveforms), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(waveforms[i : i + self.batch_size], dtype=np.float32))
                images = self.frontend(batch)
                out.append(self.model.features(images).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.embedding_size), np.float32)


def build_embedder(name: str, blocks: Sequence[str] = (), *, precision: str = "float32",
                   speeds: Sequence[float] = (1.0,)):
    """An embedder by config name: ``"birdnet"`` (torch), ``"birdnet-tflite"`` or ``"cnn:/path/to/bundle"``.

    Its kind (:func:`echoengine.kinds.embedder_kind`) builds it. ``blocks``
    (BirdNET's, see :func:`feature_size`) add pooled block outputs to
    BirdNET's embedding; ``precision`` is the torch BirdNET's front end
    arithmetic (``model.birdnet_precision``); ``speeds`` the playback speeds
    whose views of each window the torch BirdNET embeds side by side
    (``model.birdnet_speeds``). The BirdNET embedders are loaded once per process.
    """
    return embedder_kind(name).make_embedder(name, blocks, precision=precision, speeds=tuple(speeds))


def config_embedder(model: ModelConfig):
    """The embedder of a ``[model]`` section: its embedder, BirdNET blocks, front-end precision and speeds."""
    return build_embedder(model.embedder, model.birdnet_blocks, precision=model.birdnet_precision,
                          speeds=model.birdnet_speeds)


@functools.cache
def _birdnet(embedder: type, blocks: tuple[str, ...], **options):
    return embedder(blocks=blocks, **options)


def birdnet_torch_embedder(name: str, blocks: Sequence[str] = (), *, precision: str = "float32",
                           speeds: tuple[float, ...] = (1.0,)) -> BirdNETTorchEmbedder:
    """The ``birdnet`` embedder (BirdNET V2.4 in torch), shared within the process."""
    return _birdnet(BirdNETTorchEmbedder, block_order(blocks), precision=precision, speeds=tuple(speeds))


def birdnet_tflite_embedder(name: str, blocks: Sequence[str] = (), *, precision: str = "float32",
                            speeds: tuple[float, ...] = (1.0,)) -> BirdNETEmbedder:
    """The ``birdnet-tflite`` embedder (BirdNET V2.4 through TFLite, float32 throughout), shared within the process.

    It embeds the windows as they are: other playback ``speeds`` than 1 are an EchoError.
    """
    if tuple(speeds) != (1.0,):
        raise EchoError(f"model.birdnet_speeds = {list(speeds)} needs the birdnet embedder (torch); birdnet-tflite "
                        "embeds the windows as they are (set model.birdnet_speeds = [1.0])")
    return _birdnet(BirdNETEmbedder, block_order(blocks))


def cnn_embedder(name: str, blocks: Sequence[str] = (), *, precision: str = "float32",
                 speeds: tuple[float, ...] = (1.0,)) -> CNNEmbedder:
    """The ``cnn:/path/to/bundle`` embedder: that bundle's CNN (``blocks``, ``precision``, ``speeds`` unused)."""
    return CNNEmbedder(name.removeprefix("cnn:"))


def embed_clips(embedder, clips: np.ndarray, config: EchoConfig) -> np.ndarray:
    """Embeddings of the embedder windows of clips (n, clip samples) -> (n, windows, embedding size)."""
    window = embedder.window_samples
    windows = clip_windows(clips, window=window, hop=embedding_hop_samples(config, window))
    return embedder.embed(windows.reshape(-1, window)).reshape(len(clips), windows.shape[1], -1)


class EmbeddingCache(FeatureCache):
    """A :class:`FeatureCache` of float32 embedding arrays, keyed by the embedder too.

    Values are stored exactly (float32, never pickled), so a hit returns the
    very values of the miss that stored them.

    Examples
    --------
    >>> import tempfile
    >>> cache = EmbeddingCache(tempfile.mkdtemp(), EchoConfig(), "test-embedder")
    >>> value = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    >>> cache.put("k", value)
    >>> np.array_equal(cache.get("k"), value)
    True
    """

    stored_dtype = np.dtype("<f4")

    def __init__(self, directory, config: EchoConfig, embedder_identity: str) -> None:
        super().__init__(directory, config)
        identity = f"{embedder_identity}-hop{config.model.embedding_hop}"
        self._clean_fingerprint = f"{identity}-{config.fingerprint('audio')}"
        self._augmented_fingerprint = f"{identity}-" + config.fingerprint(
            "audio", "augment", ignore=("augment.variants", "augment.mixup_p", "augment.mixup_alpha",
                                        "augment.embedding_variants"))

    def _to_stored(self, value: np.ndarray) -> np.ndarray:
        return np.asarray(value, dtype=self.stored_dtype)

    def _from_stored(self, stored: np.ndarray) -> np.ndarray:
        return stored.astype(np.float32, copy=False)


class EmbeddingDataset(ClipDataset):
    """(window embeddings, one-hot label) items of a catalog, for a model on an embedder.

    Parameters are those of :class:`echoengine.dataset.ClipDataset`; the
    embedder is ``config.model.embedder``. Its sample rate must be
    ``audio.sample_rate``.
    """

    def __init__(self, table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool,
                 cache: FeatureCache | None = None, progress: bool = False, clips: bool = False) -> None:
        self.embedder = config_embedder(config.model)
        if self.embedder.sample_rate != config.audio.sample_rate:
            raise EchoError(f"the {config.model.embedder} embedder takes {self.embedder.sample_rate} Hz audio: "
                            f"set audio.sample_rate = {self.embedder.sample_rate}")
        if cache is not None and not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache.directory, config, self.embedder.identity)
        hop = embedding_hop_samples(config, self.embedder.window_samples)
        if hop > self.embedder.window_samples:
            raise EchoError(f"model.embedding_hop ({config.model.embedding_hop} s) is longer than the "
                            f"{config.model.embedder} window ({self.embedder.window_seconds} s): windows would miss "
                            "audio")
        super().__init__(table, classes, config, train=train, cache=cache, clips=clips)
        self.variants = config.augment.embedding_variants
        self.progress = progress
        self._memory: dict[tuple[int, int, int], np.ndarray | None] = {}

    def embedding_keys(self) -> list[tuple[int, int, int]]:
        """Every item's ``(row, start, variant)``: all variants of each clip in training, clean windows otherwise."""
        return self._all_keys()

    def embedding_cache_key(self, row: int, start: int, variant: int) -> str:
        """The feature-cache key of an item's embeddings (see :meth:`embedding_keys`)."""
        return self._cache_key(row, start, variant)

    def _all_keys(self) -> list[tuple[int, int, int]]:
        if self.train:
            return [(row, start, v) for row, start in self.items for v in range(self.variants)]
        return [(row, start, -1) for row, start in self.items]

    def precompute(self, *, chunk: int = 32) -> None:
        """Embed every item of the dataset (all variants in training), in batches, through the cache."""
        missing = []
        for key in self._all_keys():
            if key in self._memory:
                continue
            cached = self.cache.get(self._cache_key(*key)) if self.cache is not None else None
            if cached is not None:
                self._memory[key] = cached
            else:
                missing.append(key)
        bar = tqdm(total=len(missing), desc=f"embedding ({self.config.model.embedder})", unit="clip", leave=False,
                   disable=not self.progress or not missing, file=sys.stderr)
        for i in range(0, len(missing), chunk):
            part = missing[i : i + chunk]
            clips, usable = [], []
            for key in part:
                try:
                    clips.append(self.clip_waveform(*key)[0])
                    usable.append(key)
                except AudioError as error:
                    self._memory[key] = None
                    self.report(error)
            if clips:
                self._embed_clips(usable, np.stack(clips))
            bar.update(len(part))
        bar.close()

    def all_embeddings(self) -> np.ndarray:
        """Every computed window embedding, stacked: (n, embedding size)."""
        arrays = [value for value in self._memory.values() if value is not None]
        return np.concatenate(arrays) if arrays else np.zeros((0, self.embedder.embedding_size), np.float32)

    def _embed_clips(self, keys: list[tuple[int, int, int]], clips: np.ndarray) -> None:
        for key, value in zip(keys, embed_clips(self.embedder, clips, self.config)):
            self._memory[key] = value
            if self.cache is not None:
                self.cache.put(self._cache_key(*key), value)

    def _cache_key(self, row: int, start: int, variant: int) -> str:
        return self.cache_key(row, max(start, 0), variant)

    def __getitem__(self, item: int | tuple[int, int]):
        index, variant = item if isinstance(item, tuple) else (item, 0)
        row, start = self.items[index]
        key = (row, start, variant) if self.train else (row, start, -1)
        if key not in self._memory:
            self._load_one(key)
        value = self._memory[key]
        if value is None:
            return None
        return torch.from_numpy(value), self.target(row, start, key[2])

    def _load_one(self, key: tuple[int, int, int]) -> None:
        cached = self.cache.get(self._cache_key(*key)) if self.cache is not None else None
        if cached is not None:
            self._memory[key] = cached
            return
        try:
            self._embed_clips([key], self.clip_waveform(*key)[0][None])
        except AudioError as error:
            self._memory[key] = None
            self.report(error)


class MultiLabelEmbeddingDataset(BoxLabels, EmbeddingDataset):
    """Multi-label (window embeddings, multi-hot target) items of annotated recordings: see :class:`BoxLabels`."""


def make_dataset(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool,
                 cache: FeatureCache | None = None, progress: bool = False,
                 boxes: pd.DataFrame | None = None, clips: bool = False) -> ClipDataset:
    """The dataset a model of this config trains on, as its kind makes it: images, window embeddings or waveforms.

    With ``boxes`` (annotations of the recordings in ``table``), multi-label
    items (:class:`echoengine.dataset.BoxLabels`). Embedding datasets are
    embedded in full here (batched, cached). Clean items are the windows
    recordings are scored in, or with ``clips`` the clips a head is fitted
    and validated on (:class:`echoengine.dataset.ClipDataset`).
    """
    if config.data.photos:  # photos: a CNN on decoded images (the config allows no other model)
        return photo_dataset(table, classes, config, train=train, boxes=boxes)
    kind = config.model.kind
    if boxes is not None and not kind.multilabel:
        raise EchoError(f"multi-label training works with CNN backbones and embedders, not {kind.label}")
    return kind.dataset(table, classes, config, train=train, cache=cache, progress=progress, boxes=boxes, clips=clips)


def embedding_dataset(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool,
                      cache: FeatureCache | None = None, progress: bool = False,
                      boxes: pd.DataFrame | None = None, clips: bool = False) -> EmbeddingDataset:
    """Window embeddings of ``config.model.embedder`` (the embedder kinds), embedded in full now (batched, cached).

    With ``boxes``, multi-label items (:class:`MultiLabelEmbeddingDataset`).
    """
    if boxes is not None:
        dataset = MultiLabelEmbeddingDataset(table, boxes, classes, config, train=train, cache=cache,
                                             progress=progress, clips=clips)
    else:
        dataset = EmbeddingDataset(table, classes, config, train=train, cache=cache, progress=progress, clips=clips)
    dataset.precompute()
    return dataset
