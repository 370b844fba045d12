"""Export a bundle to one ONNX serving graph that takes raw audio, and check it.

For a CNN bundle, ``model.onnx`` takes a mono float32 waveform at the bundle's
sample rate, of any length of at least one sample, and does everything
inside the graph: cut it into windows of the clip length (the last one padded
with silence, as :mod:`echoengine.prediction` does), the mel front end, the CNN,
the softmax, and the mean over windows. Outputs:

* ``probabilities`` (n_classes,): the file's class probabilities;
* ``window_probabilities`` (n_windows, n_classes).

The graph's front end computes the same spectrogram as
:class:`echoengine.features.MelFrontend`, written with operators every ONNX
runtime has: the windowed DFT of the used frequency bins as a strided
convolution, and the mel filter bank and image resize as dense products.

A BirdNET bundle (a head on the torch BirdNET's embeddings, ``--embedder
birdnet``, or BirdNET fine-tuned, ``--backbone birdnet``) exports the same way,
with BirdNET inside: each clip is cut into 3 s windows (``model.embedding_hop``
apart, the last one padded), BirdNET's own front end runs in float64 (a
Gather of the frames and one matrix product per branch: onnxruntime has no
float64 convolution), then its network and the head, averaged over the
clip's windows. **The graph then holds the BirdNET V2.4 weights, licensed CC
BY-NC-SA 4.0** (non-commercial use, share alike).

For a bundle on the TFLite interpreter (``birdnet-tflite``) or on another
bundle's CNN (``cnn:``), ``model.onnx`` holds the head only: input
``embeddings`` (clips, embedder windows per clip, embedding size), same two
outputs; ``echoengine predict --onnx`` cuts, embeds and feeds them.

A photo bundle (``data.kind = "images"``) exports its CNN alone: input
``pixels``, uint8 (images, size, size, 3), the images decoded, turned
upright, resized and cropped by :func:`echoengine.images.load_pixels`
(Pillow, outside the graph); output ``probabilities`` (images, n_classes),
the scaling to [0, 1], the ``[image]`` normalisation and the softmax inside.

Every export checks itself: the graph, run by onnxruntime, must give the
probabilities of the PyTorch path (``echoengine predict``) on real clips
within ``tolerance`` (1e-4), or the export fails and no model.onnx is left.

Examples
--------
>>> from echoengine.config import EchoConfig
>>> frontend = GraphFrontend(EchoConfig().replace(audio={"clip_seconds": 1.0}))
>>> frontend(torch.zeros(2, 48000)).shape
torch.Size([2, 3, 260, 260])
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import librosa
import numpy as np
import torch
from torch import nn

from echoengine.bundle import load_bundle
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.features import mel_filter_bank, resize_matrix
from echoengine.files import write_atomic
from echoengine.layout import ONNX_FILE, Bundle, read_splits, weights_digest
from echoengine.photodata import PhotoServing
from echoengine.photoscore import PIXELS, predict_photos
from echoengine.scoring import (  # the graph's runtime; re-exported: what an exported bundle is run with
    WEIGHTS_KEY,
    bundle_onnx_session,
    file_pooling,
    onnx_session,
    pool_windows,
    predict_files,
    stream_window_probabilities,
    window_scorer,
)

__all__ = [
    "ONNX_FILE", "BirdNETEmbeddingHead", "GraphFrontend", "ServingModel", "bundle_onnx_session", "clip_model",
    "export_onnx", "image_clip_model", "onnx_session", "waveform_clip_model",
]

# An exported graph is fed about a minute of windows at a time (echoengine.scoring.CHUNK_SECONDS): its memory
# grows with its input (small_cnn on the Echo front end: about 0.3 GiB per minute), not with the file's length.


class GraphFrontend(nn.Module):
    """The mel front end for clips of the config's length, in exportable operators.

    Input (batch, clip samples) float32; output the model images (batch,
    channels, height, width), equal to :class:`MelFrontend`'s within float32
    rounding.
    """

    def __init__(self, config: EchoConfig) -> None:
        super().__init__()
        fe, rate = config.frontend, config.audio.sample_rate
        self.config = fe
        clip = config.audio.clip_samples
        win_length = fe.win_length or fe.n_fft
        window = librosa.util.pad_center(librosa.filters.get_window(fe.window, win_length, fftbins=True), size=fe.n_fft)
        bank = mel_filter_bank(fe, sample_rate=rate)
        used = np.flatnonzero(bank.any(axis=0))
        lo, hi = int(used[0]), int(used[-1]) + 1
        angle = 2 * np.pi * np.outer(np.arange(lo, hi), np.arange(fe.n_fft)) / fe.n_fft
        basis = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])  # (2 * bins, n_fft)
        self.register_buffer("dft", torch.as_tensor(basis[:, None, :], dtype=torch.float32))
        self.register_buffer("mel", torch.as_tensor(bank[:, lo:hi], dtype=torch.float32))
        n_frames = 1 + clip // fe.hop_length if fe.center else 1 + (clip - fe.n_fft) // fe.hop_length
        time_map = resize_matrix(n_frames, fe.image_height, method=fe.resize, antialias=fe.resize_antialias)
        self.register_buffer("time_map", torch.as_tensor(time_map, dtype=torch.float32))
        mel_map = np.eye(fe.n_mels) if fe.n_mels == fe.image_width else resize_matrix(
            fe.n_mels, fe.image_width, method=fe.resize, antialias=fe.resize_antialias).T
        self.register_buffer("mel_map", torch.as_tensor(mel_map, dtype=torch.float32))
        self.bins = hi - lo

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        fe = self.config
        x = clips.unsqueeze(1)
        if fe.center:
            half = fe.n_fft // 2
            x = nn.functional.pad(x, (half, half), mode=fe.pad_mode)
        spectrum = nn.functional.conv1d(x, self.dft, stride=fe.hop_length)  # (batch, 2 * bins, frames)
        power = spectrum[:, : self.bins] ** 2 + spectrum[:, self.bins :] ** 2
        if fe.power != 2.0:
            power = power ** (fe.power / 2)
        mel = torch.matmul(self.mel, power).transpose(1, 2)  # (batch, frames, n_mels)
        db = 10.0 * torch.log10(torch.clamp(mel, min=fe.amin))
        if fe.ref != 1.0:
            db = db - 10.0 * math.log10(max(fe.amin, fe.ref))
        peak = db.amax(dim=(1, 2), keepdim=True)
        if fe.top_db is not None:
            db = torch.maximum(db, peak - fe.top_db)
        image = torch.matmul(torch.matmul(self.time_map, db - peak), self.mel_map)
        low, high = image.amin(dim=(1, 2), keepdim=True), image.amax(dim=(1, 2), keepdim=True)
        image = (image - low) / torch.clamp(high - low, min=1e-6)
        return image.unsqueeze(1).expand(-1, fe.image_channels, -1, -1)


def _file_and_window_scores(logits: torch.Tensor, pooling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Window scores and the file's, pooled as :func:`echoengine.scoring.file_pooling` says (softmax and mean,
    softmax of the mean logits, or sigmoid and max)."""
    if pooling == "max":
        probabilities = torch.sigmoid(logits)
        return probabilities.amax(dim=0), probabilities
    probabilities = torch.softmax(logits, dim=-1)
    if pooling == "logit-mean":
        return torch.softmax(logits.mean(dim=0), dim=-1), probabilities
    return probabilities.mean(dim=0), probabilities


class ServingModel(nn.Module):
    """Waveform (samples,) -> (probabilities, window probabilities): windows, front end, model, softmax, mean."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        self.clip = bundle.config.window_samples  # the scorer's windows: clips, or BirdNET's 3 s
        self.model = clip_model(bundle)
        self.pooling = file_pooling(bundle.config)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = waveform.shape[0]
        windows = (n + self.clip - 1) // self.clip
        padded = nn.functional.pad(waveform, (0, windows * self.clip - n))
        return _file_and_window_scores(self.model(padded.reshape(-1, self.clip)), self.pooling)


class BirdNETEmbeddingHead(nn.Module):
    """Clips -> logits: BirdNET (torch) embeds the clip's 3 s windows, the bundle's embedding head scores them.

    The serving module of the ``birdnet`` embedder's kind (:mod:`echoengine.kinds`).
    """

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        from echoengine.embeddings import embedding_hop_samples
        from echoengine.models.birdnet_torch import BirdNETClassifier

        window = BirdNETClassifier.window
        model = bundle.config.model
        self.embedder = BirdNETClassifier(nn.Identity(), hop=embedding_hop_samples(bundle.config, window),
                                          blocks=model.birdnet_blocks, precision=model.birdnet_precision,
                                          speeds=model.birdnet_speeds)
        self.head = bundle.model

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedder.embeddings(clips))


def clip_model(bundle: Bundle) -> nn.Module:
    """The bundle as one module from raw clips (batch, clip samples) to logits: its kind's ``serving``.

    A CNN bundle gets :class:`GraphFrontend`; a BirdNET bundle, fine-tuned or a
    head on the torch BirdNET's embeddings, runs BirdNET inside. Bundles on the
    TFLite interpreter (``birdnet-tflite``) or on another bundle's CNN
    (``cnn:``) embeddings have no such module.
    """
    model = bundle.config.model
    if model.kind.serving is None:
        raise EchoError(f"{bundle.path}: its {model.embedder} embeddings cannot run inside one graph")
    return model.kind.serving(bundle)


def image_clip_model(bundle: Bundle) -> nn.Module:
    """Clips -> logits of a CNN bundle: :class:`GraphFrontend`, then the model (the ``cnn`` kind)."""
    return nn.Sequential(GraphFrontend(bundle.config), bundle.model)


def waveform_clip_model(bundle: Bundle) -> nn.Module:
    """Clips -> logits of a model that takes raw clips itself (fine-tuned BirdNET): the model."""
    return bundle.model


class _HeadServing(nn.Module):
    """Embeddings (clips, windows, size) -> (probabilities, clip probabilities)."""

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        self.model = bundle.model
        self.pooling = file_pooling(bundle.config)

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _file_and_window_scores(self.model(embeddings), self.pooling)


def _check_files(bundle: Bundle, files: Sequence[str | Path], n: int = 4) -> list[str]:
    """Real clips for the parity check: the given files, else the bundle's test files."""
    if files:
        return [str(f) for f in files]
    table = read_splits(bundle.path)
    if table is not None:
        test = table.loc[table["part"] == "test", "path"].tolist() or table["path"].tolist()
        found = [p for p in test if os.path.isfile(p)][:n]
        if found:
            return found
    raise EchoError(f"{bundle.path}: no audio to check the export on (its splits.csv files are gone); pass --check")


def _torch_probabilities(bundle: Bundle, files: list[str]) -> np.ndarray:
    predict = predict_photos if bundle.config.data.photos else predict_files
    return predict([bundle], files, log=lambda line: None)  # each file as it decodes, to its end


def _stamp_weights(path: Path, folder: Path) -> None:
    """Record in an exported graph which weights it was made from."""
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = WEIGHTS_KEY, weights_digest(folder)
    onnx.save(model, str(path))


def export_onnx(bundle_path: str | Path, *, out: str | Path | None = None, check: Sequence[str | Path] = (),
                tolerance: float = 1e-4, opset: int = 17) -> tuple[Path, float]:
    """Write ``model.onnx`` for a bundle and check it against the PyTorch path.

    Parameters
    ----------
    bundle_path : str or Path
    out : str or Path, optional
        Where to write (default ``BUNDLE/model.onnx``).
    check : sequence of paths
        Audio files for the parity check (default: up to 4 of the bundle's test files).
    tolerance : float
        Largest allowed absolute difference of a probability.

    Returns
    -------
    path : Path
    max_difference : float

    Raises
    ------
    EchoError
        The exported graph disagrees with PyTorch beyond ``tolerance``: nothing is
        written (an earlier graph at ``out`` stays as it was).
    """
    bundle = load_bundle(bundle_path)
    out = Path(out) if out else bundle.path / ONNX_FILE
    files = _check_files(bundle, check)
    differences: list[float] = []

    def write(temporary: Path) -> None:  # a failed export or check raises here: write_atomic leaves nothing
        _export_graph(bundle, temporary, opset=opset)
        differences.append(_check_graph(bundle, temporary, files, tolerance=tolerance))

    write_atomic(out, write)
    return out, differences[0]


def _export_graph(bundle: Bundle, path: Path, *, opset: int) -> None:
    """Write the serving graph of ``bundle`` to ``path`` (the head alone for a bundle on outside embeddings)."""
    outputs = ["probabilities", "window_probabilities"]
    if bundle.config.data.photos:  # uint8 pixels of decoded, resized images in: probabilities per image out
        size = bundle.config.image.size
        serving, example = PhotoServing(bundle), torch.zeros(2, size, size, 3, dtype=torch.uint8)
        names, outputs, axes = [PIXELS], outputs[:1], {PIXELS: {0: "images"}, "probabilities": {0: "images"}}
    elif bundle.config.model.kind.serving is None:  # its embedder cannot run inside the graph: the head alone
        size = bundle.model.mean.shape[0]
        serving, example = _HeadServing(bundle), torch.zeros(2, 2, size)
        names, axes = ["embeddings"], {"embeddings": {0: "clips", 1: "windows"}, "window_probabilities": {0: "windows"}}
    else:
        serving, example = ServingModel(bundle), torch.zeros(bundle.config.audio.clip_samples + 100)
        names, axes = ["waveform"], {"waveform": {0: "samples"}, "window_probabilities": {0: "windows"}}
    with torch.no_grad(), warnings.catch_warnings():  # tracer notes on the shape arithmetic of the windowing
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(serving.eval(), (example,), str(path), input_names=names, output_names=outputs,
                              dynamic_axes=axes,
                              opset_version=opset, dynamo=False)
        except Exception as exc:  # the exporter's errors carry whole graph dumps: keep the first line
            reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise EchoError(f"{bundle.path}: ONNX export failed ({reason.strip()[:300]})") from None


def _check_graph(bundle: Bundle, path: Path, files: list[str], *, tolerance: float) -> float:
    """Stamp the graph at ``path`` with its weights and return its largest difference from PyTorch on ``files``.

    Raises
    ------
    EchoError
        A check file could not be read, or the difference exceeds ``tolerance``.
    """
    _stamp_weights(path, bundle.path)
    session = onnx_session(path)
    expected = _torch_probabilities(bundle, files)
    if np.isnan(expected).any():
        raise EchoError(f"export check: {files[int(np.isnan(expected).any(axis=1).argmax())]} could not be read")
    if bundle.config.data.photos:
        return _difference(predict_photos([bundle], files, sessions=[session]), expected, tolerance=tolerance)
    scorer = window_scorer([bundle], sessions=[session])  # the scorer of predict --onnx and detect --onnx
    pooling = file_pooling(bundle.config)
    got = np.stack([pool_windows(stream_window_probabilities(scorer, f), pooling=pooling) for f in files])
    return _difference(got, expected, tolerance=tolerance)


def _difference(got: np.ndarray, expected: np.ndarray, *, tolerance: float) -> float:
    """The largest difference of the graph's probabilities from PyTorch's, or an EchoError above ``tolerance``."""
    difference = float(np.abs(got - expected).max())
    if not difference <= tolerance:
        raise EchoError(f"export check failed: the ONNX graph and PyTorch differ by up to {difference:.2e} in "
                        f"probability on {len(got)} file(s) (allowed {tolerance:.0e}); nothing written")
    return difference
