"""One scorer: windows of audio in, per-window class probabilities out, whatever is behind it.

A bundle, an ensemble of fold bundles (their probabilities averaged) or the
bundles' exported ONNX graphs (onnxruntime) score windows the same way for
``predict``, ``detect``, ``evaluate`` and ``calibrate``:

* :class:`WindowScorer` turns windows of raw audio (n, clip samples) into
  model inputs (:meth:`WindowScorer.prepare`: the mel front end of CNN
  bundles, the waveforms otherwise) and scores them
  (:meth:`WindowScorer.score`: softmax, or per-class sigmoids for
  multi-label models, averaged over an ensemble);
* :func:`ensemble_scores` is that average, for inputs computed elsewhere
  (the datasets of :mod:`echoengine.prediction`);
* the ONNX functions run a bundle's ``model.onnx`` on a file, a waveform or a
  stream of blocks in bounded memory, refusing a graph exported from other
  weights.

Examples
--------
>>> scorer = WindowScorer([load_bundle("bundle")])  # doctest: +SKIP
>>> scorer.score(scorer.prepare(np.zeros((2, scorer.clip_samples), "float32"))).shape  # doctest: +SKIP
(2, 4)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from echoengine import audio
from echoengine.bundle import ONNX_FILE, WEIGHTS_FILE, Bundle, weights_digest
from echoengine.clips import fixed_windows, stream_windows
from echoengine.embeddings import build_embedder, embed_clips
from echoengine.errors import EchoError
from echoengine.features import MelFrontend
from echoengine.kinds import EMBEDDINGS, IMAGES

__all__ = ["CHUNK_SECONDS", "WEIGHTS_KEY", "WindowScorer", "activation", "bundle_onnx_session", "check_ensemble",
           "ensemble_scores", "onnx_predict_file", "onnx_predict_stream", "onnx_predict_waveform", "onnx_session",
           "onnx_window_probabilities"]

#: Seconds of audio fed to an ONNX graph at a time: its memory does not grow with a file's length.
CHUNK_SECONDS = 60.0
#: ONNX metadata: the ``weights_digest`` of the weights a graph was exported from.
WEIGHTS_KEY = "echoengine.weights"


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


class WindowScorer:
    """Class probabilities of windows of raw audio (n, clip samples) with a bundle or an ensemble.

    ``prepare`` turns windows into model inputs and runs in the data workers
    (the mel front end for CNN bundles; the waveforms themselves for
    embedding, fine-tuned BirdNET and ONNX scoring); ``score`` runs the
    model(s) in the main process and returns softmax probabilities, the
    mean over an ensemble's members.
    """

    # CNN inference on a CPU is fastest in small batches (activations stay in cache): small_cnn 8 ms per
    # image in batches of 4 against 14 in batches of 16, EfficientNetV2-B0 10 against 20 (2 cores)
    model_batch = 4

    def __init__(self, bundles: Sequence[Bundle], *, onnx: bool = False) -> None:
        check_ensemble(bundles)
        self.bundles = list(bundles)
        self.config = bundles[0].config
        self.classes = bundles[0].classes
        self.clip_samples = self.config.audio.clip_samples
        self.kind = "onnx" if onnx else self.config.model.kind.input  # images, embeddings or waveforms
        self._frontend = None
        self._embedder = None
        self._sessions = None
        if self.kind == "onnx":
            self._sessions = [bundle_onnx_session(b.path) for b in self.bundles]  # graphs of the current weights
            if self._sessions[0].get_inputs()[0].name != "waveform":
                raise EchoError(f"{self.bundles[0].path}: its {ONNX_FILE} takes embeddings, not audio; "
                                "detect with PyTorch (without --onnx)")

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
        """Class scores (n, n_classes), averaged over the bundles: softmax, or sigmoids for multi-label models."""
        if self.kind == "onnx":
            flat = inputs.numpy().reshape(-1)  # windows of exactly one clip: the graph's own windows
            return np.mean([s.run(None, {"waveform": flat})[1] for s in self._sessions], axis=0)
        if self.kind == EMBEDDINGS:
            inputs = self._embed(inputs.numpy())
        elif self.kind == IMAGES:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        chunk = self.model_batch if self.kind == IMAGES else len(inputs)
        with torch.inference_mode():
            return np.concatenate([ensemble_scores(self.bundles, part).numpy() for part in inputs.split(chunk)])

    def _embed(self, windows: np.ndarray) -> torch.Tensor:
        if self._embedder is None:
            self._embedder = build_embedder(self.config.model.embedder, self.config.model.birdnet_blocks)
        return torch.from_numpy(embed_clips(self._embedder, windows, self.config))


def onnx_session(path: str | Path):
    """An onnxruntime session on the CPU; an unreadable graph is an EchoError naming the file."""
    import onnxruntime

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


def onnx_predict_file(session, bundle: Bundle, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of one file with an exported graph (onnxruntime session).

    Returns
    -------
    probabilities : (n_classes,), window_probabilities : (n_windows, n_classes)
    """
    return onnx_predict_waveform(session, bundle, audio.load(path, bundle.config.audio))


def onnx_predict_waveform(session, bundle: Bundle, y: np.ndarray, *,
                          chunk_seconds: float = CHUNK_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """:func:`onnx_predict_file` on a waveform already decoded at the bundle's sample rate.

    The graph runs on chunks of ``chunk_seconds`` of whole windows (see
    :func:`onnx_predict_stream`), so its memory does not grow with the length.

    Examples
    --------
    >>> probabilities, windows = onnx_predict_waveform(session, bundle, y)  # doctest: +SKIP
    """
    return onnx_predict_stream([session], [bundle], [y], chunk_seconds=chunk_seconds)


def onnx_window_probabilities(session, bundle: Bundle, y: np.ndarray, *, embedder=None) -> np.ndarray:
    """The graph's window probabilities (windows, n_classes) of a waveform, in one run.

    A graph that takes audio cuts it itself; for one that takes embeddings,
    the waveform is cut into clips (the last one padded) and embedded here,
    by ``embedder`` (default: the bundle's, built for this call).

    Examples
    --------
    >>> onnx_window_probabilities(session, bundle, np.zeros(48000 * 12, "float32")).shape  # doctest: +SKIP
    (3, 4)
    """
    if session.get_inputs()[0].name == "waveform":
        return session.run(None, {"waveform": np.asarray(y, dtype=np.float32)})[1]
    clip = bundle.config.audio.clip_samples
    clips, _ = fixed_windows(y, length=clip, hop=clip)
    embedder = embedder or build_embedder(bundle.config.model.embedder, bundle.config.model.birdnet_blocks)
    embeddings = embed_clips(embedder, clips, bundle.config)
    return session.run(None, {"embeddings": embeddings.astype(np.float32)})[1]


def onnx_predict_stream(sessions: Sequence, bundles: Sequence[Bundle], blocks: Iterable[np.ndarray], *,
                        chunk_seconds: float = CHUNK_SECONDS) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a waveform given block by block, with the graphs of one bundle or an ensemble.

    Each graph runs on chunks of about ``chunk_seconds`` of whole windows
    (the last chunk: the rest), so only a chunk and a block are in memory.
    The graph scores each window on its own, so the chunks' windows are
    those of the whole waveform, and the file's probabilities pool them as
    the graph does: the mean (multi-label models: the max). An ensemble
    averages its members' file and window probabilities.

    Parameters
    ----------
    sessions : sequence of onnxruntime sessions
        One per bundle, in the same order.
    bundles : sequence of Bundle
        Sharing their audio config (the windows are cut once for all).
    blocks : iterable of ndarray
        The mono float32 waveform at the bundles' sample rate, in consecutive blocks.

    Returns
    -------
    probabilities : (n_classes,), window_probabilities : (n_windows, n_classes)

    Examples
    --------
    >>> from echoengine import audio
    >>> blocks = audio.stream("long.flac", bundle.config.audio)  # doctest: +SKIP
    >>> probabilities, windows = onnx_predict_stream([session], [bundle], blocks)  # doctest: +SKIP
    """
    clip = bundles[0].config.audio.clip_samples
    size = clip * max(1, round(chunk_seconds * bundles[0].config.audio.sample_rate / clip))
    embedders = [None if s.get_inputs()[0].name == "waveform"
                 else build_embedder(b.config.model.embedder, b.config.model.birdnet_blocks)
                 for s, b in zip(sessions, bundles, strict=True)]  # built once, not once per chunk
    windows: list[list[np.ndarray]] = [[] for _ in sessions]
    for _, chunk, valid in stream_windows(blocks, length=size, hop=size):
        for mine, session, bundle, embedder in zip(windows, sessions, bundles, embedders, strict=True):
            mine.append(onnx_window_probabilities(session, bundle, chunk[:valid], embedder=embedder))
    if not windows[0]:
        raise ValueError("no samples to score")
    per_member = [np.concatenate(mine) for mine in windows]
    pooled = [w.max(axis=0) if b.config.model.multilabel else w.mean(axis=0, dtype=np.float64)
              for w, b in zip(per_member, bundles, strict=True)]
    return np.mean(pooled, axis=0), np.mean(per_member, axis=0)
