"""Photographs in, model pixels out: decode (Pillow), turn upright, RGB, resize and crop, normalise.

The photo path's front end (``data.kind = "images"``, the ``[image]``
section: :class:`echoengine.config.ImageConfig`), as pure functions on
Pillow images and numpy arrays; no torch, so that a photo bundle's exported
graph scores with Pillow, numpy and onnxruntime alone.

* :func:`decode` reads a file into an upright RGB image (EXIF orientation
  applied, alpha dropped, palettes expanded), or raises an
  :class:`~echoengine.errors.ImageError` naming the file;
* :func:`fit` gives the evaluation pixels, uint8 (size, size, 3): the
  centre crop of ``crop_fraction`` of the shorter side, or the whole image
  squashed; :func:`random_fit` a training variant (random resized crop, flip);
* :func:`normalise` scales pixels to [0, 1] and by the ImageNet mean and
  std, channels first: the model's input. The exported graph takes the
  uint8 pixels and does this step inside.

Examples
--------
>>> from PIL import Image
>>> from echoengine.config import ImageConfig
>>> photo = Image.new("RGB", (640, 480), (200, 120, 40))
>>> pixels = fit(photo, ImageConfig(size=32))
>>> pixels.shape, pixels.dtype, pixels[0, 0].tolist()
((32, 32, 3), dtype('uint8'), [200, 120, 40])
>>> normalise(pixels, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).shape
(3, 32, 32)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from echoengine.errors import ImageError
from echoengine.input_config import ImageConfig

__all__ = ["ImageInfo", "check", "decode", "fit", "load_pixels", "normalise", "random_fit"]

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
_RATIOS = (math.log(3 / 4), math.log(4 / 3))  # aspect ratios of random crops, as torchvision's RandomResizedCrop


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`check` reports of a usable image: its upright size, its mode and format before conversion."""

    width: int
    height: int
    mode: str
    format: str


def _open(path: str | Path) -> Image.Image:
    """The decoded image as stored (pixels loaded), or an ImageError naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except UnidentifiedImageError:
        raise ImageError(path, "not an image Pillow can read (JPEG or PNG expected)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"cannot decode the image ({' '.join(str(exc).split())[:200]})") from None
    return image


def decode(path: str | Path) -> Image.Image:
    """An upright RGB image of a photo file.

    The EXIF orientation (how the camera was held) is applied, palettes and
    grey levels become RGB and an alpha channel is dropped.

    Raises
    ------
    ImageError
        A missing, empty, truncated or unreadable file (one line naming it).

    Examples
    --------
    >>> decode("no/such.jpg")
    Traceback (most recent call last):
    ...
    echoengine.errors.ImageError: no/such.jpg: file not found
    """
    image = _open(path)
    upright = ImageOps.exif_transpose(image)
    if upright.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit) grey: Pillow's RGB would clip it
        wide = np.asarray(upright, dtype=np.float64)
        scale = 65535.0 if upright.mode.startswith("I;16") or wide.max() > 255 else 255.0
        upright = Image.fromarray(np.clip(wide / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return upright.convert("RGB") if upright.mode != "RGB" else upright


def check(path: str | Path) -> ImageInfo:
    """Decode a photo to check it; its upright size, mode and format.

    Raises
    ------
    ImageError
        The file cannot be used (see :func:`decode`).
    """
    image = _open(path)
    upright = ImageOps.exif_transpose(image)
    return ImageInfo(upright.width, upright.height, image.mode, image.format or "")


def _resize(image: Image.Image, box: tuple[float, float, float, float], config: ImageConfig) -> np.ndarray:
    """The region ``box`` (left, top, right, bottom) of ``image`` resized to the config's square, uint8 (h, w, 3)."""
    resized = image.resize((config.size, config.size), _FILTERS[config.interpolation], box=box)
    return np.asarray(resized, dtype=np.uint8).copy()


def fit(image: Image.Image, config: ImageConfig) -> np.ndarray:
    """The evaluation pixels of an RGB image: uint8 (size, size, 3).

    ``resize = "crop"``: the centred square of ``crop_fraction`` of the
    shorter side, resized (the shorter side scaled to ``size / crop_fraction``,
    then the centre ``size`` x ``size``, in one resampling); ``"squash"``: the
    whole image resized to the square.
    """
    width, height = image.size
    if config.resize == "squash":
        return _resize(image, (0.0, 0.0, float(width), float(height)), config)
    side = config.crop_fraction * min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return _resize(image, (left, top, left + side, top + side), config)


def random_fit(image: Image.Image, config: ImageConfig, rng: np.random.Generator) -> np.ndarray:
    """A training variant of an RGB image, uint8 (size, size, 3), drawn from ``rng`` alone (reproducible).

    A random crop of ``min_scale`` to all of the image's area with an aspect
    ratio of 3/4 to 4/3 (torchvision's ``RandomResizedCrop``; after ten
    draws that do not fit, the evaluation crop), resized to the square, then
    flipped left to right with probability ``flip_p``.

    Examples
    --------
    >>> from PIL import Image
    >>> photo = Image.new("RGB", (64, 48))
    >>> a, b = (random_fit(photo, ImageConfig(size=16), np.random.default_rng(7)) for _ in range(2))
    >>> a.shape, bool((a == b).all())
    ((16, 16, 3), True)
    """
    width, height = image.size
    pixels = None
    for _ in range(10):
        area = width * height * rng.uniform(config.min_scale, 1.0)
        ratio = math.exp(rng.uniform(*_RATIOS))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            pixels = _resize(image, (left, top, left + w, top + h), config)
            break
    if pixels is None:
        pixels = fit(image, config)
    if rng.random() < config.flip_p:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return pixels


def normalise(pixels: np.ndarray, *, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Model inputs of uint8 pixels (..., h, w, 3): float32 (..., 3, h, w), ``(pixels / 255 - mean) / std``.

    Examples
    --------
    >>> normalise(np.full((1, 1, 3), 255, np.uint8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)).ravel().tolist()
    [2.0, 1.0, 0.5]
    """
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    scaled = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(scaled, -1, -3))


def load_pixels(path: str | Path, config: ImageConfig) -> np.ndarray:
    """The evaluation pixels of a photo file: :func:`decode`, then :func:`fit`; uint8 (size, size, 3)."""
    return fit(decode(path), config)
