"""The embeddings a head on an embedder trains on, computed ahead into the feature cache, locally or on Ray.

``echoengine embed DATA --config C --cache-dir D [--engine ray]`` embeds
every usable file of a labelled dataset as ``train`` and ``cv`` with that
config will ask for (:func:`parts`): the clean clips of every file (and,
where the model scores shorter windows than its clips, those windows) and,
for a head trained by epochs, the ``augment.embedding_variants`` training
variants of every file (a superset of any split's). With ``engine="ray"`` the driver
lists the embeddings the cache lacks, hands them out in chunks to Ray tasks
(each worker process builds the embedder once, and embeds in the batches a
local run would: the same values) and, the only writer, puts each chunk's
embeddings into the cache as it comes back. Training then finds them all
there. Single-label datasets only (multi-label crops depend on the split's
boxes).

Examples
--------
>>> [len(chunk) for chunk in key_chunks([(0, 0, -1)] * 70, batch=32, batches=1)]
[32, 32, 6]
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from echoengine import catalog, sources
from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.embeddings import EmbeddingDataset, embed_clips
from echoengine.errors import AudioError, EchoError
from echoengine.raydetect import RayOptions, ray_session

__all__ = ["BATCH", "EmbedResult", "embed_dataset", "embed_keys", "key_chunks", "parts"]

#: Clips embedded at a time: :meth:`echoengine.embeddings.EmbeddingDataset.precompute`'s chunk.
BATCH = 32

Key = tuple[int, int, int]  # (row, start, variant) of an item of an EmbeddingDataset
Part = tuple[bool, bool]  # (train, clips): which items of the data, as make_dataset takes them


@dataclass
class EmbedResult:
    """How many clip embeddings were computed, found in the cache already, or could not be read."""

    computed: int
    cached: int
    failed: int

    def text(self) -> str:
        """One line, as ``echoengine embed`` prints it."""
        return (f"{self.computed} clip embeddings computed, {self.cached} already cached"
                + (f", {self.failed} unreadable" if self.failed else ""))


def key_chunks(keys: list[Key], *, batch: int = BATCH, batches: int = 4) -> list[list[Key]]:
    """Keys in chunks of ``batches`` whole batches (the last one shorter): what one task embeds."""
    size = batch * batches
    return [keys[i : i + size] for i in range(0, len(keys), size)]


# ---- the worker side --------------------------------------------------------------------------------------------
_DATASETS: dict[str, EmbeddingDataset] = {}  # one dataset (and embedder) per worker process and table


def _dataset(table: pd.DataFrame, classes: list[str], config: EchoConfig, part: Part) -> EmbeddingDataset:
    identity = hashlib.sha1(repr((config.fingerprint(), part, table["path"].tolist())).encode()).hexdigest()
    if identity not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[identity] = _part_dataset(table, classes, config, part, cache=None)
    return _DATASETS[identity]


def _part_dataset(table: pd.DataFrame, classes: list[str], config: EchoConfig, part: Part, *,
                  cache: FeatureCache | None) -> EmbeddingDataset:
    train, clips = part
    return EmbeddingDataset(table, classes, config, train=train, cache=cache, clips=clips)


def embed_keys(table: pd.DataFrame, classes: list[str], config: EchoConfig, part: Part, threads: int,
               keys: list[Key]) -> Iterator[tuple[list[Key], np.ndarray | None, list[tuple[Key, str]]]]:
    """A Ray task: the clips of ``keys`` of one part of the data (:func:`parts`), see :func:`_embed_batches`."""
    import torch

    torch.set_num_threads(threads)
    yield from _embed_batches(_dataset(table, classes, config, part), config, keys)


def _embed_batches(data: EmbeddingDataset, config: EchoConfig,
                   keys: list[Key]) -> Iterator[tuple[list[Key], np.ndarray | None, list[tuple[Key, str]]]]:
    """Embed the clips of ``keys`` in batches of :data:`BATCH`; yield each batch's keys, embeddings and failures."""
    for start in range(0, len(keys), BATCH):
        clips, usable, failed = [], [], []
        for key in keys[start : start + BATCH]:
            try:
                clips.append(data.clip_waveform(*key)[0])
                usable.append(key)
            except AudioError as error:
                failed.append((key, str(error)))
        values = embed_clips(data.embedder, np.stack(clips), config) if clips else None
        yield usable, values, failed


# ---- the driver side --------------------------------------------------------------------------------------------
def embed_dataset(data: str | Path, config: EchoConfig, *, cache_dir: str | Path, engine: str = "local",
                  ray_options: RayOptions | None = None, progress: bool = False,
                  log: Callable[[str], None] = print) -> EmbedResult:
    """Fill the feature cache at ``cache_dir`` with the embeddings training on ``data`` with ``config`` needs.

    Returns
    -------
    EmbedResult
        Counts of clip embeddings computed, found cached and unreadable.
    """
    if engine == "ray":
        importlib.import_module("ray")  # the distributed extra: when missing, nothing is computed
    if not config.model.embedder:
        raise EchoError("echoengine embed computes the embeddings of a head on an embedder: give a config with "
                        "model.embedder (e.g. --embedder birdnet)")
    if config.model.multilabel:
        raise EchoError("echoengine embed takes single-label data; multi-label training embeds its own crops")
    table, _ = sources.labelled_files(data, config, progress=progress)
    if not len(table):
        raise EchoError(f"{data}: no usable audio files")
    classes = catalog.class_names(table)
    cache = FeatureCache(cache_dir, config)
    result, jobs, datasets = EmbedResult(0, 0, 0), [], {}
    for part in parts(config):
        datasets[part] = dataset = _part_dataset(table, classes, config, part, cache=cache)
        keys = dataset.embedding_keys()
        missing = [key for key in keys if dataset.cache.get(dataset.embedding_cache_key(*key)) is None]
        result.cached += len(keys) - len(missing)
        jobs += [(part, chunk) for chunk in key_chunks(missing)]
    if not jobs:
        return result
    if engine == "ray":
        batches = _on_ray(table, classes, config, jobs, ray_options or RayOptions(), log=log)
    else:
        batches = ((part, *batch) for part, keys in jobs for batch in _embed_batches(datasets[part], config, keys))
    with tqdm(total=sum(len(keys) for _, keys in jobs), desc=f"embedding ({config.model.embedder})", unit="clip",
              disable=not progress, file=sys.stderr) as bar:
        for part, usable, values, failed in batches:
            dataset = datasets[part]
            for key, value in zip(usable, values if values is not None else [], strict=True):
                dataset.cache.put(dataset.embedding_cache_key(*key), value)
            for _key, reason in failed:
                log(f"error: {reason}")
            result.computed += len(usable)
            result.failed += len(failed)
            bar.update(len(usable) + len(failed))
    return result


def parts(config: EchoConfig) -> list[Part]:
    """The parts of the data whose embeddings training, validation and evaluation read, as ``(train, clips)``.

    Augmented training variants (a head trained by epochs; an L-BFGS head
    reads clean clips only), the clean clips heads are fitted and validated
    on, and, where a model scores shorter windows than its clips (BirdNET's
    3 s), the clean windows evaluation scores.

    Examples
    --------
    >>> parts(EchoConfig().replace(model={"embedder": "birdnet"}))
    [(False, True), (False, False)]
    """
    found = [] if config.convex_head() else [(True, False)]
    found.append((False, True))
    if config.window_seconds != config.audio.clip_seconds:
        found.append((False, False))
    return found


def _on_ray(table: pd.DataFrame, classes: list[str], config: EchoConfig, jobs: list[tuple[Part, list[Key]]],
            ray_options: RayOptions, *, log: Callable[[str], None]) -> Iterator:
    """``(part, keys, embeddings, failures)`` of each batch of the jobs, embedded by Ray tasks, each batch once."""
    with ray_session(ray_options, log=log) as ray:
        task = ray.remote(embed_keys).options(num_cpus=ray_options.threads, max_retries=ray_options.max_retries)
        table_ref = ray.put(table)
        limit = ray_options.tasks_in_flight(cluster_cpus=int(ray.cluster_resources().get("CPU", 1)))
        running: dict = {}
        received: set[tuple[Part, Key]] = set()
        while jobs or running:
            while jobs and len(running) < limit:
                part, keys = jobs.pop(0)
                running[task.remote(table_ref, classes, config, part, ray_options.threads, keys)] = part
            ready, _ = ray.wait(list(running), num_returns=1)
            try:
                usable, values, failed = ray.get(next(ready[0]))
            except StopIteration:
                del running[ready[0]]
                continue
            except ray.exceptions.RayError as exc:
                detail = " ".join(str(exc).split())[-300:]
                raise EchoError(f"a Ray task failed: {detail}; the embeddings stored so far are kept: run it "
                                "again") from None
            part = running[ready[0]]
            first = usable[0] if usable else failed[0][0] if failed else None
            if (part, first) in received:  # a retried task gives only what was not received; kept safe anyway
                continue
            received.add((part, first))
            yield part, usable, values, failed
