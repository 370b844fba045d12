"""Class probabilities of photo files: :func:`echoengine.scoring.predict_files` for photo bundles.

Each image is decoded, turned upright, resized and cropped by Pillow
(:func:`echoengine.images.load_pixels`), and a batch of them is scored by
the bundles in PyTorch (normalised here, :func:`echoengine.images.normalise`)
or by their exported graphs, which take the uint8 pixels and normalise
inside (onnxruntime: no torch needed). An ensemble of fold bundles averages
their probabilities. A file that cannot be decoded is reported in one line
and its row is NaN; the others go on.

Examples
--------
>>> predict_photos([read_bundle("fox-model")], ["trap1.jpg", "trap2.png"], onnx=True).shape  # doctest: +SKIP
(2, 3)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from echoengine import images
from echoengine.errors import ImageError
from echoengine.layout import Bundle, check_ensemble
from echoengine.scoring import bundle_onnx_session

__all__ = ["PIXELS", "photo_scorer", "predict_photos"]

#: The input of a photo bundle's exported graph: uint8 pixels (images, size, size, 3).
PIXELS = "pixels"


def photo_scorer(bundles: Sequence[Bundle], *, onnx: bool = False,
                 sessions: Sequence | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``score(pixels)``: class probabilities (n, classes) of uint8 pixels (n, size, size, 3), averaged over bundles.

    With ``onnx`` (or ``sessions``), each bundle's exported graph scores
    (:func:`echoengine.scoring.bundle_onnx_session` checks it comes from the
    bundle's weights); else the bundles' PyTorch models (loaded with them).
    """
    check_ensemble(bundles)
    settings = bundles[0].config.image
    if onnx or sessions is not None:
        graphs = list(sessions) if sessions is not None else [bundle_onnx_session(b.path) for b in bundles]
        return lambda pixels: np.mean([graph.run(None, {PIXELS: pixels})[0] for graph in graphs], axis=0)
    import torch  # not in the serving runtime

    from echoengine.torchscorer import TorchScorer

    scorer = TorchScorer(bundles)

    def score(pixels: np.ndarray) -> np.ndarray:
        return scorer.score_inputs(torch.from_numpy(images.normalise(pixels, mean=settings.mean, std=settings.std)))

    return score


def predict_photos(bundles: Sequence[Bundle], paths: Sequence[str | Path], *, onnx: bool = False,
                   sessions: Sequence | None = None, batch_size: int = 16, progress: bool = False,
                   log: Callable[[str], None] = print, **_) -> np.ndarray:
    """Class probabilities (n_files, n_classes) of photo files; NaN rows for files that cannot be decoded.

    Parameters
    ----------
    bundles : sequence of Bundle
        One photo bundle (``data.kind = "images"``) or a fold ensemble.
    paths : sequence of paths
    onnx, sessions
        Score with the exported graphs (see :func:`photo_scorer`).
    batch_size : int
        Images decoded and scored at a time.
    log : callable
        Given one line (``"error: FILE: reason"``) per file that cannot be decoded.

    Other keyword options of :func:`echoengine.scoring.predict_files` (the
    feature cache, audio blocks) do not apply to photos and are ignored.
    """
    score = photo_scorer(bundles, onnx=onnx, sessions=sessions)
    settings = bundles[0].config.image
    probabilities = np.full((len(paths), len(bundles[0].classes)), np.nan)
    starts = range(0, len(paths), batch_size)
    for start in tqdm(starts, desc="predicting", unit="batch", leave=False, disable=not progress, file=sys.stderr):
        rows, pixels = [], []
        for row in range(start, min(start + batch_size, len(paths))):
            try:
                pixels.append(images.load_pixels(paths[row], settings))
            except ImageError as error:
                log(f"error: {error}")
                continue
            rows.append(row)
        if rows:
            probabilities[rows] = score(np.stack(pixels))
    return probabilities
