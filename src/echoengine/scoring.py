"""One scorer: windows of audio in, per-window class probabilities out, whatever is behind it.

A bundle, an ensemble of fold bundles (their probabilities averaged) or the
bundles' exported ONNX graphs (onnxruntime) score windows the same way for
``predict``, ``detect``, ``evaluate``, ``calibrate`` and the export check:

* :class:`WindowScorer` turns windows of raw audio (n, clip samples) into
  model inputs (:meth:`WindowScorer.prepare`: the mel front end of CNN
  bundles, the waveforms otherwise) and scores them
  (:meth:`WindowScorer.score`: softmax, or per-class sigmoids for
  multi-label models, averaged over an ensemble); the inputs a dataset
  already computed (cached images or embeddings) are scored by
  :meth:`WindowScorer.score_inputs`;
* :func:`score_stream` scores the windows of a waveform given block by
  block, a batch at a time, so memory does not grow with a file's length,
  and :func:`pool_windows` pools them into a file's probabilities;
* :func:`bundle_onnx_session` opens a bundle's ``model.onnx``, refusing a
  graph exported from other weights.

Examples
--------
>>> scorer = WindowScorer([load_bundle("bundle")])  # doctest: +SKIP
>>> scorer.score(scorer.prepare(np.zeros((2, scorer.clip_samples), "float32"))).shape  # doctest: +SKIP
(2, 4)
>>> windows = score_stream(scorer, [np.zeros(3 * scorer.clip_samples, "float32")])  # doctest: +SKIP
>>> pool_windows(windows, multilabel=False).shape  # doctest: +SKIP
(4,)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from echoengine.bundle import ONNX_FILE, WEIGHTS_FILE, Bundle, weights_digest
from echoengine.clips import stream_windows
from echoengine.embeddings import build_embedder, embed_clips
from echoengine.errors import EchoError
from echoengine.features import MelFrontend
from echoengine.kinds import EMBEDDINGS, IMAGES

__all__ = ["CHUNK_SECONDS", "ONNX", "WEIGHTS_KEY", "WindowScorer", "activation", "bundle_onnx_session",
           "check_ensemble", "ensemble_scores", "onnx_session", "pool_windows", "score_stream"]

#: Seconds of audio an ONNX graph scores at a time: its memory grows with its input, not with a file's length.
CHUNK_SECONDS = 60.0
#: ONNX metadata: the ``weights_digest`` of the weights a graph was exported from.
WEIGHTS_KEY = "echoengine.weights"
#: The scorer kind of exported graphs (beside the model kinds' inputs: images, embeddings, waveforms).
ONNX = "onnx"


def _model_inputs(config) -> tuple:
    return (config.fingerprint("audio", "frontend"), config.model.embedder, config.model.embedding_hop,
            config.model.birdnet_blocks if config.model.uses_birdnet else ())


def check_ensemble(bundles: Sequence[Bundle]) -> None:
    """Raise an EchoError unless the bundles share their classes and the way their inputs are computed."""
    first = bundles[0]
    for other in bundles[1:]:
        if other.classes != first.classes:
            raise EchoError(f"{other.path}: its classes differ from those of {first.path}")
        if _model_inputs(other.config) != _model_inputs(first.config):
            raise EchoError(f"{other.path}: its audio or front-end config differs from that of {first.path}")


def activation(config) -> callable:
    """Softmax over the classes, or a sigmoid per class for multi-label models."""
    return torch.sigmoid if config.model.multilabel else (lambda logits: torch.softmax(logits, dim=1))


def ensemble_scores(bundles: Sequence[Bundle], inputs: torch.Tensor) -> torch.Tensor:
    """Class scores of model inputs, averaged over the bundles (softmax, or sigmoids for multi-label models)."""
    scores = activation(bundles[0].config)
    return sum(scores(b.model(inputs)) for b in bundles) / len(bundles)


def pool_windows(window_probs: np.ndarray, *, multilabel: bool) -> np.ndarray:
    """A file's probabilities from its windows': the mean (multi-label models: the max).

    Examples
    --------
    >>> pool_windows(np.array([[0.8, 0.2], [0.4, 0.6]]), multilabel=False)
    array([0.6, 0.4])
    >>> pool_windows(np.array([[0.8, 0.2], [0.4, 0.6]]), multilabel=True)
    array([0.8, 0.6])
    """
    if multilabel:
        return window_probs.max(axis=0).astype(np.float64)
    return window_probs.mean(axis=0, dtype=np.float64)


class WindowScorer:
    """Class probabilities of windows of raw audio (n, clip samples) with a bundle, an ensemble or their graphs.

    ``prepare`` turns windows into model inputs and runs in the data workers
    (the mel front end for CNN bundles; the waveforms themselves for
    embedding, fine-tuned BirdNET and ONNX scoring); ``score`` runs the
    model(s) in the main process and returns softmax probabilities (sigmoids
    for multi-label models), the mean over an ensemble's members.

    Parameters
    ----------
    bundles : sequence of Bundle
        One bundle, or an ensemble sharing classes and front end.
    onnx : bool
        Score with each bundle's exported ``model.onnx`` (onnxruntime)
        instead of PyTorch; a graph that takes embeddings is given the
        bundle's embeddings of the windows.
    sessions : sequence of onnxruntime sessions, optional
        The graphs to score with, one per bundle (implies ``onnx``; default:
        the bundles' own ``model.onnx``, checked against their weights).
    """

    # CNN inference on a CPU is fastest in small batches (activations stay in cache): small_cnn 8 ms per
    # image in batches of 4 against 14 in batches of 16, EfficientNetV2-B0 10 against 20 (2 cores)
    model_batch = 4

    def __init__(self, bundles: Sequence[Bundle], *, onnx: bool = False, sessions: Sequence | None = None) -> None:
        check_ensemble(bundles)
        self.bundles = list(bundles)
        self.config = bundles[0].config
        self.classes = bundles[0].classes
        self.clip_samples = self.config.audio.clip_samples
        onnx = onnx or sessions is not None
        self.kind = ONNX if onnx else self.config.model.kind.input  # images, embeddings, waveforms or onnx
        self._frontend = None
        self._embedder = None
        self._sessions = None
        if onnx:
            self._sessions = list(sessions) if sessions is not None else [bundle_onnx_session(b.path)
                                                                          for b in self.bundles]
            self._graph_input = self._sessions[0].get_inputs()[0].name  # "waveform" or "embeddings"

    @property
    def batch_windows(self) -> int:
        """Windows scored at a time by default: about :data:`CHUNK_SECONDS` of audio for a graph, else 16."""
        if self.kind == ONNX:
            return max(1, round(CHUNK_SECONDS / self.config.audio.clip_seconds))
        return 16

    def prepare(self, windows: np.ndarray) -> torch.Tensor:
        """Model inputs of windows (n, clip samples): images for CNN bundles, else the waveforms."""
        waveforms = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if self.kind != IMAGES:
            return waveforms
        if self._frontend is None:
            self._frontend = MelFrontend.from_config(self.config)
        with torch.inference_mode():
            return self._frontend(waveforms)

    def score(self, inputs: torch.Tensor) -> np.ndarray:
        """Class scores (n, n_classes) of prepared windows, averaged over the bundles (or their graphs)."""
        if self.kind == ONNX:
            return self._score_graphs(inputs.numpy())
        if self.kind == EMBEDDINGS:
            inputs = self._embed(inputs.numpy())
        return self.score_inputs(inputs)

    def score_inputs(self, inputs: torch.Tensor) -> np.ndarray:
        """Class scores of model inputs as the models take them (images, embeddings or waveforms).

        This is how a dataset's inputs (images or embeddings from the
        feature cache) are scored; :meth:`score` comes here after preparing
        the windows' inputs itself.
        """
        device = next(self.bundles[0].model.parameters()).device
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        chunk = self.model_batch if self.kind == IMAGES else len(inputs)
        with torch.inference_mode():
            return np.concatenate([ensemble_scores(self.bundles, part.to(device)).cpu().numpy()
                                   for part in inputs.split(chunk)])

    def _score_graphs(self, windows: np.ndarray) -> np.ndarray:
        if self._graph_input == "waveform":  # windows of exactly one clip, end to end: the graph's own windows
            feed = {"waveform": windows.reshape(-1)}
        else:
            feed = {"embeddings": self._embed(windows).numpy().astype(np.float32)}
        return np.mean([session.run(None, feed)[1] for session in self._sessions], axis=0)

    def _embed(self, windows: np.ndarray) -> torch.Tensor:
        if self._embedder is None:
            self._embedder = build_embedder(self.config.model.embedder, self.config.model.birdnet_blocks)
        return torch.from_numpy(embed_clips(self._embedder, windows, self.config))


def score_stream(scorer: WindowScorer, blocks: Iterable[np.ndarray], *, batch_size: int | None = None,
                 inputs: Callable[[np.ndarray, list[int]], torch.Tensor] | None = None) -> np.ndarray:
    """Class probabilities (n_windows, n_classes) of a waveform given block by block.

    The windows are the clip length apart, the last one padded with
    silence (the windows of :func:`echoengine.prediction.predict_table` and
    of an exported graph); only a block and a batch of windows are in memory.

    Parameters
    ----------
    scorer : WindowScorer
    blocks : iterable of ndarray
        The mono float32 waveform at the scorer's sample rate, in consecutive blocks.
    batch_size : int, optional
        Windows scored at a time (default: ``scorer.batch_windows``).
    inputs : callable, optional
        ``inputs(windows, starts)`` gives the model inputs of a batch
        (default: ``scorer.prepare(windows)``); a cache of images goes here.

    Raises
    ------
    ValueError
        The blocks hold no samples.

    Examples
    --------
    >>> score_stream(scorer, audio.stream("dawn_chorus.flac", scorer.config.audio)).shape  # doctest: +SKIP
    (720, 4)
    """
    clip = scorer.clip_samples
    windows = stream_windows(blocks, length=clip, hop=clip)
    prepare = inputs or (lambda batch, starts: scorer.prepare(batch))
    scores = []
    while batch := list(islice(windows, batch_size or scorer.batch_windows)):
        stacked = np.stack([window for _, window, _ in batch])
        scores.append(scorer.score(prepare(stacked, [start for start, _, _ in batch])))
    if not scores:
        raise ValueError("no samples to score")
    return np.concatenate(scores)


def onnx_session(path: str | Path):
    """An onnxruntime session on the CPU; an unreadable graph is an EchoError naming the file."""
    import onnxruntime  # a heavy import, only where a graph is run

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EchoError(f"{path}: cannot load the ONNX graph ({' '.join(str(exc).split())[:300]})") from None


def bundle_onnx_session(folder: str | Path):
    """The session of a bundle's ``model.onnx``, checked to come from the bundle's current weights.

    Raises
    ------
    EchoError
        No graph, an unreadable one, or one exported from other weights
        (the bundle was trained again since): re-export it.
    """
    folder = Path(folder)
    path = folder / ONNX_FILE
    if not path.is_file():
        raise EchoError(f"{folder}: no {ONNX_FILE}; run: echoengine export {folder}")
    session = onnx_session(path)
    recorded = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_KEY)
    if recorded != weights_digest(folder):
        raise EchoError(f"{path}: exported from other weights than {folder / WEIGHTS_FILE} (the bundle was trained "
                        f"again since); run: echoengine export {folder}")
    return session
