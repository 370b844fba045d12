"""The PyTorch scorer: windows of audio in, class probabilities out, with a bundle or an ensemble.

:class:`TorchScorer` is the scorer of :func:`echoengine.scoring.window_scorer`
when the models run in PyTorch (the exported graphs run in
:class:`echoengine.scoring.GraphScorer`, without torch). It turns windows of
raw audio (n, clip samples) into model inputs (:meth:`TorchScorer.prepare`:
the mel front end of CNN bundles, the waveforms otherwise), scores them
(:meth:`TorchScorer.score`: softmax, or per-class sigmoids for multi-label
models, averaged over an ensemble), and scores the inputs a dataset already
computed (:meth:`TorchScorer.score_inputs`: cached images or embeddings).

Examples
--------
>>> scorer = TorchScorer([load_bundle("bundle")])  # doctest: +SKIP
>>> scorer.score(scorer.prepare(np.zeros((2, scorer.window_samples), "float32"))).shape  # doctest: +SKIP
(2, 4)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from echoengine.cache import FeatureCache, quantise_image
from echoengine.embeddings import config_embedder, embed_clips
from echoengine.features import MelFrontend
from echoengine.kinds import EMBEDDINGS, IMAGES, MODEL_BATCH
from echoengine.layout import Bundle, check_ensemble

__all__ = ["TorchScorer", "WorkerShare", "activation", "ensemble_scores"]

# Cache entries of windows cut from a streamed decode: their own keys, since a streamed decode equals the
# ranged reads of datasets only within resampling rounding (no run's values depend on which ran first).
_STREAMED = -2


def activation(config) -> Callable:
    """Softmax over the classes, or a sigmoid per class for multi-label models."""
    return torch.sigmoid if config.model.multilabel else (lambda logits: torch.softmax(logits, dim=1))


def ensemble_scores(bundles: Sequence[Bundle], inputs: torch.Tensor) -> torch.Tensor:
    """Class scores of model inputs, averaged over the bundles (softmax, or sigmoids for multi-label models)."""
    scores = activation(bundles[0].config)
    return sum(scores(b.model(inputs)) for b in bundles) / len(bundles)


class TorchScorer:
    """Class probabilities of windows of raw audio (n, window samples) with a bundle or an ensemble, in PyTorch.

    Its windows are the config's :attr:`~echoengine.config.EchoConfig.window_samples`:
    the clips of CNN bundles, BirdNET's 3 s windows for models on BirdNET.

    ``prepare`` turns windows into model inputs and runs in the data workers
    (the mel front end for CNN bundles; the waveforms themselves for
    embedding and fine-tuned BirdNET bundles); ``score`` runs the model(s)
    in the main process and returns softmax probabilities (sigmoids for
    multi-label models), the mean over an ensemble's members.

    Parameters
    ----------
    bundles : sequence of Bundle
        Loaded with their models (:func:`echoengine.bundle.load_bundle`),
        sharing classes and front end.
    """

    model_batch = MODEL_BATCH
    batch_windows = 16  # windows scored at a time by default

    def __init__(self, bundles: Sequence[Bundle]) -> None:
        check_ensemble(bundles)
        self.bundles = list(bundles)
        self.config = bundles[0].config
        self.classes = bundles[0].classes
        self.window_samples = self.config.window_samples  # what it scores: clips, or BirdNET's 3 s windows
        self.kind = self.config.model.kind.input  # images, embeddings or waveforms
        self._frontend = None
        self._embedder = None

    def load(self) -> None:
        """Build now what scoring builds on first use (the mel front end, the embedder), e.g. before a fork."""
        if self.kind == IMAGES and self._frontend is None:
            self._frontend = MelFrontend.from_config(self.config)
        if self.kind == EMBEDDINGS and self._embedder is None:
            self._embedder = config_embedder(self.config.model)

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
        """Class scores (n, n_classes) of prepared windows, averaged over the bundles."""
        if self.kind == EMBEDDINGS:
            inputs = self.embed(inputs.numpy())
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

    def embed(self, windows: np.ndarray) -> torch.Tensor:
        """The bundles' embeddings of windows (for heads on an embedder)."""
        if self._embedder is None:
            self._embedder = config_embedder(self.config.model)
        return torch.from_numpy(embed_clips(self._embedder, windows, self.config))

    def cached_inputs(self, path: str | Path,
                      cache: FeatureCache | None) -> Callable[[np.ndarray, list[int]], torch.Tensor]:
        """``inputs(windows, starts)`` for :func:`echoengine.scoring.score_stream`: images through ``cache``.

        Images of CNN bundles are rounded as the cache stores them
        (:func:`~echoengine.cache.quantise_image`) whether they come from it
        or not, so a cold cache, a warm one and none give the same
        probabilities; other inputs are :meth:`prepare`'s.
        """
        return partial(self._cached_inputs, path, cache)

    def _cached_inputs(self, path: str | Path, cache: FeatureCache | None, windows: np.ndarray,
                       starts: list[int]) -> torch.Tensor:
        if self.kind != IMAGES:
            return self.prepare(windows)
        keys, images = [], [None] * len(windows)
        if cache is not None:
            keys = [cache.key(path, start=start, length=self.window_samples, variant=_STREAMED) for start in starts]
            images = [cache.get(key) for key in keys]
        missing = [i for i, image in enumerate(images) if image is None]
        if missing:
            for i, image in zip(missing, self.prepare(windows[missing])[:, 0].numpy(), strict=True):
                images[i] = quantise_image(image)
                if cache is not None:
                    cache.put(keys[i], images[i])
        channels = self.config.frontend.image_channels
        return torch.from_numpy(np.stack(images)).unsqueeze(1).expand(-1, channels, -1, -1)


class WorkerShare(IterableDataset):
    """A source of batches split among the worker processes of a torch ``DataLoader``.

    Each worker iterates ``source.share(worker index, number of workers)``
    with one thread (the processes share the cores); without workers, the
    main process iterates ``source.share(0, 1)``.
    """

    def __init__(self, source) -> None:
        self.source = source

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            return iter(self.source.share(0, 1))
        torch.set_num_threads(1)
        return iter(self.source.share(info.id, info.num_workers))
