"""Photos as model inputs in PyTorch: the dataset a CNN trains and is evaluated on, and the graph it is served by.

:class:`PhotoDataset` is :class:`echoengine.dataset.ClipDataset` for photos
(``data.kind = "images"``): one item per image, (normalised image, one-hot
label). Training items are augmented variants as for audio
(:class:`echoengine.dataset.VariantSampler` draws one of
``augment.variants`` per image and epoch), variant ``k`` of an image being
a random resized crop and flip drawn from ``(augment.seed, k, image)``
alone (:func:`echoengine.images.random_fit`); evaluation items are the
clean centre crop (:func:`echoengine.images.fit`). Decoding a photo is
cheap next to a spectrogram: nothing is cached. A file that fails is
handled by ``data.on_error`` as for audio.

:class:`PhotoServing` is the exported graph's module: uint8 pixels (images,
size, size, 3), the output of :func:`echoengine.images.load_pixels`, in;
class probabilities (images, classes) out; the scaling, normalisation and
softmax inside.

Examples
--------
>>> dataset = photo_dataset(table, classes, config, train=False)  # doctest: +SKIP
>>> image, target = dataset[0]  # doctest: +SKIP
>>> tuple(image.shape)  # doctest: +SKIP
(3, 224, 224)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from echoengine import images
from echoengine.augment import variant_seed
from echoengine.config import EchoConfig
from echoengine.dataset import ClipDataset
from echoengine.errors import EchoError
from echoengine.layout import Bundle

__all__ = ["PhotoDataset", "PhotoServing", "photo_dataset"]


class PhotoDataset(ClipDataset):
    """(image (3, size, size) float32, one-hot label) items of a photo catalog.

    The items, sampler, failure policy and labels are :class:`ClipDataset`'s
    (it is one, without audio): training items ``(index, variant)``,
    evaluation items one per image, ``rows()`` the catalog row of each.

    Parameters
    ----------
    table : pandas.DataFrame
        A photo catalog (``path``, ``label``).
    classes : sequence of str
    config : EchoConfig
        With ``data.kind = "images"``; ``[image]`` says how images become inputs.
    train : bool
        Augmented variants, or the clean centre crop.
    """

    def __init__(self, table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool) -> None:
        self.config, self.train, self.cache = config, train, None
        self._label_rows(table, classes)
        self.items = [(row, -1 if train else 0) for row in range(len(self.paths))]
        self.variants = config.augment.variants

    def model_input(self, row: int, start: int, variant: int) -> torch.Tensor:
        """The normalised image of a row: the centre crop (``variant`` -1), or training variant ``variant``."""
        settings = self.config.image
        photo = images.decode(self.paths[row])
        if variant >= 0:
            rng = np.random.default_rng(variant_seed(self.config.augment.seed, variant, self.keys[row]))
            pixels = images.random_fit(photo, settings, rng)
        else:
            pixels = images.fit(photo, settings)
        return torch.from_numpy(images.normalise(pixels, mean=settings.mean, std=settings.std))


def photo_dataset(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, train: bool,
                  boxes: pd.DataFrame | None = None, **_) -> PhotoDataset:
    """The dataset of a photo catalog (``data.kind = "images"``); the feature cache and ``clips`` do not apply.

    Raises
    ------
    EchoError
        ``boxes`` given: photos carry one label each.
    """
    if boxes is not None:
        raise EchoError("photos (data.kind = 'images') carry one label each: multi-label training is for "
                        "annotated recordings")
    return PhotoDataset(table, classes, config, train=train)


class PhotoServing(nn.Module):
    """uint8 pixels (images, size, size, 3) -> class probabilities (images, classes): the photo graph's module.

    The pixels are :func:`echoengine.images.load_pixels`'s (decoded, upright,
    RGB, resized and cropped by Pillow, outside the graph); the graph scales
    them to [0, 1], normalises them by ``[image]``'s mean and std, runs the
    CNN and the softmax.
    """

    def __init__(self, bundle: Bundle) -> None:
        super().__init__()
        settings = bundle.config.image
        self.register_buffer("mean", torch.tensor(settings.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(settings.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.model = bundle.model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        scaled = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.softmax(self.model((scaled - self.mean) / self.std), dim=-1)
