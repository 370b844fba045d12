"""One scorer: windows of audio in, per-window class probabilities out, whatever is behind it.

A bundle, an ensemble of fold bundles (their probabilities averaged) or the
bundles' exported ONNX graphs score windows the same way for ``predict``,
``detect``, ``evaluate``, ``calibrate``, the export check and the server:

* :func:`window_scorer` gives the scorer: a :class:`GraphScorer` on the
  exported graphs (onnxruntime; this module imports no torch, so the
  serving runtime needs none) or an
  :class:`echoengine.torchscorer.TorchScorer` (PyTorch). Both turn windows
  (n, clip samples) into inputs (``prepare``) and score them (``score``);
* :func:`score_stream` scores the windows of a waveform given block by
  block, a batch at a time, so memory does not grow with a file's length;
  :func:`pool_windows` pools them into a file's probabilities and
  :func:`predict_files` does both for files of any length;
* :func:`bundle_onnx_session` opens a bundle's ``model.onnx``, refusing a
  graph exported from other weights.

Examples
--------
>>> scorer = window_scorer([read_bundle("bundle")], onnx=True)  # doctest: +SKIP
>>> windows = score_stream(scorer, [np.zeros(3 * scorer.window_samples, "float32")])  # doctest: +SKIP
>>> pool_windows(windows).shape  # doctest: +SKIP
(4,)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from echoengine import audio
from echoengine.clips import stream_windows
from echoengine.errors import AudioError, EchoError
from echoengine.layout import Bundle, BundleFiles, check_ensemble, weights_digest

__all__ = ["CHUNK_SECONDS", "ONNX", "POOLINGS", "WEIGHTS_KEY", "GraphScorer", "bundle_onnx_session", "file_pooling",
           "onnx_session", "pool_windows", "predict_files", "score_stream", "scoring_threads", "set_threads",
           "stream_window_probabilities", "window_scorer"]

#: Seconds of audio an ONNX graph scores at a time: its memory grows with its input, not with a file's length.
CHUNK_SECONDS = 60.0
#: ONNX metadata: the ``weights_digest`` of the weights a graph was exported from.
WEIGHTS_KEY = "echoengine.weights"
#: The kind of a scorer of exported graphs (beside the model kinds' inputs: images, embeddings, waveforms).
ONNX = "onnx"
_THREADS: dict[str, int] = {}  # {"intra_op": n} once set_threads(n) was called: what new ONNX sessions use


def set_threads(threads: int) -> None:
    """Score with ``threads`` threads in this process: ONNX sessions made from now on, and PyTorch once imported.

    A scoring process that shares the cores with others (the server's scoring
    processes) sets its share; by default both runtimes take every core.
    """
    _THREADS["intra_op"] = threads
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def scoring_threads(threads: int | None) -> Iterator[None]:
    """Score on ``threads`` threads (torch and new ONNX sessions) within the block, then restore both settings.

    ``None`` changes nothing.
    """
    if threads is None:
        yield
        return
    torch = sys.modules.get("torch")
    before, onnx_before = (torch.get_num_threads() if torch is not None else None), _THREADS.get("intra_op")
    set_threads(threads)
    try:
        yield
    finally:
        if onnx_before is None:
            _THREADS.pop("intra_op", None)
        else:
            _THREADS["intra_op"] = onnx_before
        if "torch" in sys.modules and before is not None:
            sys.modules["torch"].set_num_threads(before)


def window_scorer(bundles: Sequence[Bundle], *, onnx: bool = False, sessions: Sequence | None = None):
    """The scorer of windows for a bundle or an ensemble: its exported graphs, or PyTorch.

    Parameters
    ----------
    bundles : sequence of Bundle
        Sharing classes and front end. For PyTorch, loaded with their models
        (:func:`echoengine.bundle.load_bundle`); for graphs,
        :func:`echoengine.layout.read_bundle` is enough.
    onnx : bool
        Score with each bundle's exported ``model.onnx`` (onnxruntime).
    sessions : sequence of onnxruntime sessions, optional
        The graphs to score with, one per bundle (implies ``onnx``).

    Returns
    -------
    GraphScorer or echoengine.torchscorer.TorchScorer
    """
    if onnx or sessions is not None:
        return GraphScorer(bundles, sessions=sessions)
    from echoengine.torchscorer import TorchScorer  # torch: not in the serving runtime

    return TorchScorer(bundles)


#: How a file's window probabilities become its own (:func:`file_pooling`).
POOLINGS = ("mean", "logit-mean", "max")


def file_pooling(config) -> str:
    """How a model of ``config`` pools a file's windows: one of :data:`POOLINGS`.

    ``"max"`` for multi-label models (is the species anywhere: its best
    window); ``"logit-mean"`` for a linear or MLP head on an embedder with
    mean pooling, fitted on clips whose logits are the mean of their
    windows' (a file's probabilities are then the softmax of the mean of its
    windows' logits: those of a clip of its length, which is what the head
    was fitted and calibrated on); ``"mean"`` of the windows' probabilities
    for the other models.

    Examples
    --------
    >>> from echoengine.config import EchoConfig
    >>> file_pooling(EchoConfig()), file_pooling(EchoConfig().replace(model={"embedder": "birdnet"}))
    ('mean', 'logit-mean')
    """
    model = config.model
    if model.multilabel:
        return "max"
    if model.embedder and model.head_name in ("linear", "mlp") and model.pooling == "mean":
        return "logit-mean"
    return "mean"


def pool_windows(window_probs: np.ndarray, *, pooling: str = "mean") -> np.ndarray:
    """A file's probabilities from its windows' (n_windows, n_classes), pooled as :func:`file_pooling` says.

    ``"logit-mean"`` is the normalised geometric mean of the windows'
    probabilities: the softmax of the mean of their logits.

    Examples
    --------
    >>> windows = np.array([[0.8, 0.2], [0.4, 0.6]])
    >>> pool_windows(windows), pool_windows(windows, pooling="max")
    (array([0.6, 0.4]), array([0.8, 0.6]))
    >>> pool_windows(windows, pooling="logit-mean").round(3)
    array([0.62, 0.38])
    """
    if pooling == "max":
        return window_probs.max(axis=0).astype(np.float64)
    if pooling == "logit-mean":
        log_mean = np.log(np.maximum(window_probs.astype(np.float64), 1e-30)).mean(axis=0)
        weights = np.exp(log_mean - log_mean.max())
        return weights / weights.sum()
    return window_probs.mean(axis=0, dtype=np.float64)


class GraphScorer:
    """Class probabilities of windows of raw audio (n, window samples) with exported ONNX graphs (no torch).

    A graph that takes audio is given the windows end to end (it cuts them
    itself); one that takes embeddings (a head on the TFLite BirdNET or on a
    CNN bundle) is given the bundle's embeddings of the windows, computed
    here. An ensemble's graphs are averaged.

    Parameters
    ----------
    bundles : sequence of Bundle
        Their config and classes (:func:`echoengine.layout.read_bundle`).
    sessions : sequence of onnxruntime sessions, optional
        One per bundle (default: each bundle's ``model.onnx``, checked to
        come from its current weights).
    """

    kind = ONNX

    def __init__(self, bundles: Sequence[Bundle], *, sessions: Sequence | None = None) -> None:
        check_ensemble(bundles)
        self.bundles = list(bundles)
        self.config = bundles[0].config
        self.classes = bundles[0].classes
        self.window_samples = self.config.window_samples  # the graph's own windows: clips, or BirdNET's 3 s
        self.batch_windows = max(1, round(CHUNK_SECONDS / self.config.window_seconds))
        self._sessions = list(sessions) if sessions is not None else [bundle_onnx_session(b.path) for b in bundles]
        self._graph_input = self._sessions[0].get_inputs()[0].name  # "waveform" or "embeddings"
        self._embedder = None

    def load(self) -> None:
        """Build now what scoring builds on first use (the embedder of a head-only graph), e.g. before a fork."""
        if self._graph_input != "waveform" and self._embedder is None:
            from echoengine.embeddings import config_embedder

            self._embedder = config_embedder(self.config.model)

    def cached_inputs(self, path: str | Path, cache) -> None:
        """None: a graph takes the waveforms themselves, so there are no inputs to cache."""
        return None

    def prepare(self, windows: np.ndarray) -> np.ndarray:
        """The graphs' inputs of windows: the waveforms themselves."""
        return np.ascontiguousarray(windows, dtype=np.float32)

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Class scores (n, n_classes) of prepared windows, averaged over the graphs."""
        if self._graph_input == "waveform":  # windows end to end: the graph cuts the same windows
            feed = {"waveform": np.asarray(windows, dtype=np.float32).reshape(-1)}
        else:
            feed = {"embeddings": self._embed(np.asarray(windows, dtype=np.float32))}
        return np.mean([session.run(None, feed)[1] for session in self._sessions], axis=0)

    def _embed(self, windows: np.ndarray) -> np.ndarray:
        from echoengine.embeddings import config_embedder, embed_clips  # the embedders run in torch or TFLite

        if self._embedder is None:
            self._embedder = config_embedder(self.config.model)
        return embed_clips(self._embedder, windows, self.config).astype(np.float32)


def score_stream(scorer, blocks: Iterable[np.ndarray], *, batch_size: int | None = None,
                 inputs: Callable[[np.ndarray, list[int]], object] | None = None) -> np.ndarray:
    """Class probabilities (n_windows, n_classes) of a waveform given block by block.

    The windows are the scorer's (``window_samples``: the clip length, or
    BirdNET's 3 s for models on BirdNET) and touch, the last one padded with
    silence (those of an exported graph, and for CNN bundles those of
    :func:`echoengine.prediction.predict_table`); only a block and a batch of
    windows are in memory.

    Parameters
    ----------
    scorer : GraphScorer or TorchScorer
    blocks : iterable of ndarray
        The mono float32 waveform at the scorer's sample rate, in consecutive blocks.
    batch_size : int, optional
        Windows scored at a time (default: ``scorer.batch_windows``).
    inputs : callable, optional
        ``inputs(windows, starts)`` gives the scorer's inputs of a batch
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
    length = scorer.window_samples
    windows = stream_windows(blocks, length=length, hop=length)
    prepare = inputs or (lambda batch, starts: scorer.prepare(batch))
    scores = []
    while batch := list(islice(windows, batch_size or scorer.batch_windows)):
        stacked = np.stack([window for _, window, _ in batch])
        scores.append(scorer.score(prepare(stacked, [start for start, _, _ in batch])))
    if not scores:
        raise ValueError("no samples to score")
    return np.concatenate(scores)


def stream_window_probabilities(scorer, path: str | Path, *, batch_size: int | None = None,
                                block_seconds: float = 60.0, cache=None) -> np.ndarray:
    """Class probabilities (n_windows, n_classes) of the windows of one file, decoded and scored block by block.

    The windows of :func:`score_stream`, cut as ``echoengine detect`` cuts
    them; only a block of audio and a batch of windows are held at a time.
    With a ``cache`` (:class:`echoengine.cache.FeatureCache`, PyTorch
    scorers), the images of CNN bundles are read from it and stored into it,
    under keys of their own (not the dataset's ranged reads).

    Raises
    ------
    AudioError
        The file cannot be decoded.

    Examples
    --------
    >>> stream_window_probabilities(window_scorer([load_bundle("bundle")]), "dawn_chorus.flac").shape  # doctest: +SKIP
    (720, 4)
    """
    blocks = audio.stream(path, scorer.config.audio, block_seconds=block_seconds)
    return score_stream(scorer, blocks, batch_size=batch_size, inputs=scorer.cached_inputs(path, cache))


def predict_files(bundles: Sequence[Bundle], paths: Sequence[str | Path], *, onnx: bool = False,
                  cache=None, batch_size: int | None = None, block_seconds: float = 60.0,
                  progress: bool = False, log: Callable[[str], None] = print) -> np.ndarray:
    """File probabilities (n_files, n_classes) of audio files of any length, in bounded memory.

    The windows' probabilities pooled as :func:`file_pooling` says (the
    mean; multi-label models: the max), each window's averaged over an ensemble's members: the probabilities of
    :func:`echoengine.prediction.predict_table`. Each file is decoded block
    by block and its windows are scored in batches as they come, by the
    scorer of ``echoengine detect``, with PyTorch or each bundle's exported graph.

    Parameters
    ----------
    bundles : sequence of Bundle
        One bundle, or an ensemble sharing classes and front end.
    paths : sequence of paths
        Audio files.
    onnx : bool
        Score with each bundle's ``model.onnx`` (onnxruntime) instead of PyTorch.
    cache : FeatureCache, optional
        Where the images of CNN bundles are read from and stored (PyTorch only).
    batch_size : int, optional
        Windows scored at a time (default: the scorer's, about a minute of audio for a graph).
    block_seconds : float
        Audio decoded at a time.
    log : callable
        Given one line per file that cannot be decoded; its row is NaN.

    Examples
    --------
    >>> predict_files([load_bundle("bundle")], ["dawn_chorus.flac", "pond.wav"]).shape  # doctest: +SKIP
    (2, 4)
    """
    scorer = window_scorer(bundles, onnx=onnx)
    probabilities = np.full((len(paths), len(scorer.classes)), np.nan)
    for i, path in enumerate(tqdm(paths, desc="predicting", unit="file", leave=False, disable=not progress,
                                  file=sys.stderr)):
        try:
            windows = stream_window_probabilities(scorer, path, batch_size=batch_size, block_seconds=block_seconds,
                                                  cache=cache)
        except AudioError as error:
            log(f"error: {error}")
            continue
        probabilities[i] = pool_windows(windows, pooling=file_pooling(scorer.config))
    return probabilities


def onnx_session(path: str | Path):
    """An onnxruntime session on the CPU; an unreadable graph is an EchoError naming the file."""
    import onnxruntime  # a heavy import (about 0.3 s), only where a graph is run

    settings = onnxruntime.SessionOptions()
    # every graph optimisation (onnxruntime's default, said here): BirdNET's network at one thread takes
    # 11.0 ms per window with them, 14.7 with the extended ones only, 16.2 with the basic ones
    settings.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if "intra_op" in _THREADS:
        settings.intra_op_num_threads, settings.inter_op_num_threads = _THREADS["intra_op"], 1
    try:
        return onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
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
    files = BundleFiles(folder)
    if not files.onnx.is_file():
        raise EchoError(f"{files.folder}: no {files.onnx.name}; run: echoengine export {files.folder}")
    session = onnx_session(files.onnx)
    recorded = session.get_modelmeta().custom_metadata_map.get(WEIGHTS_KEY)
    if recorded != weights_digest(files.folder):
        raise EchoError(f"{files.onnx}: exported from other weights than {files.weights} (the bundle was trained "
                        f"again since); run: echoengine export {files.folder}")
    return session
