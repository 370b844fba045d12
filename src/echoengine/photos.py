"""Photo datasets (``data.kind = "images"``): which kind a folder holds, checks of its files, their report.

A folder per class of ``.jpg``, ``.jpeg`` or ``.png`` files (nested folders
too) is read by :func:`echoengine.catalog.load_catalog` as recordings are,
with the photo extensions, groups from ``data.group_regex`` as for audio;
this module does what differs: :func:`data_kind` tells a folder of photos
from one of recordings, :func:`for_data` switches a training config to
photos when the data are photos, :func:`scan` decodes every image once to
check it (:func:`echoengine.images.check`), :func:`describe` is
``echoengine inspect``'s report, and :func:`check_kind` refuses to run a
model on data of the other kind. No torch here.

Examples
--------
>>> import tempfile
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> (root / "fox").mkdir()
>>> Image.new("RGB", (40, 30)).save(root / "fox" / "a.jpg")
>>> data_kind(root)
'images'
>>> for_data(EchoConfig(), root).data.kind
'images'
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pandas as pd

from echoengine import images
from echoengine.catalog import check_files, class_names
from echoengine.config import EchoConfig, ImageConfig
from echoengine.errors import EchoError, ImageError
from echoengine.input_config import AUDIO, DATA_KINDS, PHOTOS

__all__ = ["check_kind", "data_kind", "describe", "for_data", "refuse_other_kind", "refuse_photo_model",
           "scan"]

logger = logging.getLogger("echoengine")
_NOUNS = {AUDIO: "audio files", PHOTOS: "images"}
_ONE = {AUDIO: "an audio file", PHOTOS: "an image"}


def _files(source: str | Path) -> Iterable[Path]:
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        return (p for p in source.rglob("*") if not p.name.startswith(".") and p.is_file())
    return []


def data_kind(source: str | Path) -> str | None:
    """``"images"`` or ``"audio"``: what the files under ``source`` are (the more numerous); None when neither.

    A CSV (a dataset table) counts as audio, whatever it names.
    """
    if Path(source).suffix.lower() == ".csv":
        return AUDIO
    counts = dict.fromkeys(DATA_KINDS, 0)
    for path in _files(source):
        suffix = path.suffix.lower()
        for kind, extensions in DATA_KINDS.items():
            counts[kind] += suffix in extensions
    if not any(counts.values()):
        return None
    return PHOTOS if counts[PHOTOS] > counts[AUDIO] else AUDIO


def for_data(config: EchoConfig, data: str | Path, *, log: Callable[[str], None] | None = None) -> EchoConfig:
    """The config to train or inspect ``data`` with: switched to ``data.kind = "images"`` when the data are photos.

    A config that says ``"images"`` already is kept; so is one for audio
    when the data are recordings (or neither).
    """
    if config.data.photos or data_kind(data) != PHOTOS:
        return config
    (log or logger.info)(f"{data}: photos (data.kind = images): decoded and resized to {config.image.size} x "
                         f"{config.image.size} pixels as [image] says")
    return config.replace(data={"kind": PHOTOS})


def check_kind(config: EchoConfig, paths: Sequence[str | Path], *, model: str = "the model") -> None:
    """Refuse files of the other kind than the model's: photos for an audio model, audio for a photo model.

    Raises
    ------
    EchoError
        One line naming the first such file and what the model takes.

    Examples
    --------
    >>> check_kind(EchoConfig(), ["fox.jpg"], model="owls/")
    Traceback (most recent call last):
    ...
    echoengine.errors.EchoError: fox.jpg: an image, but owls/ was trained on audio files (data.kind = 'audio'); ...
    """
    mine = config.data.kind
    for path in map(Path, paths):
        other = next((kind for kind, ext in DATA_KINDS.items() if kind != mine and path.suffix.lower() in ext), None)
        if other is not None:
            raise EchoError(f"{path}: {_ONE[other]}, but {model} was trained on {_NOUNS[mine]} (data.kind = "
                            f"{mine!r}); give it {_NOUNS[mine]}")


def refuse_photo_model(config: EchoConfig, model: str, command: str = "detect") -> None:
    """Refuse a photo model where recordings are scanned for calls (``detect``, the service).

    Examples
    --------
    >>> refuse_photo_model(EchoConfig().replace(data={"kind": "images"}, model={"backbone": "small_cnn"}), "fox/")
    Traceback (most recent call last):
    ...
    echoengine.errors.EchoError: fox/: a photo model (data.kind = 'images') classifies whole images; detect finds ...
    """
    if config.data.photos:
        raise EchoError(f"{model}: a photo model (data.kind = 'images') classifies whole images; {command} finds "
                        "calls in long recordings: use echoengine predict on the photos")


def refuse_other_kind(config: EchoConfig, data: str | Path) -> None:
    """Raise when ``data`` holds no files of the config's kind but holds files of the other kind."""
    found = data_kind(data)
    if found is not None and found != config.data.kind:
        raise EchoError(f"{data}: holds {_NOUNS[found]}, but the model takes {_NOUNS[config.data.kind]} "
                        f"(data.kind = {config.data.kind!r}); a model trained on one kind cannot run on the other")


def scan(table: pd.DataFrame, config: ImageConfig | None = None, *, on_error: str = "warn",
         progress: Callable | None = None, workers: int = 4) -> tuple[pd.DataFrame, list[ImageError]]:
    """Decode every image of a catalog and keep the usable ones: :func:`echoengine.catalog.scan` for photos.

    Returns the usable rows with ``width``, ``height`` (upright), ``mode``
    and ``format`` columns added, and the errors of the others (each logged
    in one line with ``on_error = "warn"``; ``"raise"`` raises the first).
    ``config`` is unused: every decodable image is usable whatever its size.
    """
    usable, infos, errors = check_files(table, images.check, ImageError, on_error=on_error, progress=progress,
                                        workers=workers)
    for column in ("width", "height", "mode", "format"):
        usable[column] = [getattr(info, column) for info in infos]
    return usable, errors


def describe(usable: pd.DataFrame, errors: Sequence[ImageError], *, name: str = "") -> tuple[str, str]:
    """``echoengine inspect``'s report of a scanned photo dataset (:func:`scan`), and its warning, as
    :func:`echoengine.catalog.describe` for recordings: totals, sizes and formats, then images and source
    groups per class, then the unreadable files.
    """
    lines = [f"dataset: {name} (photos)",
             f"files: {len(usable) + len(errors)} ({len(usable)} usable, {len(errors)} unreadable)"]
    warning = ""
    if len(usable):
        classes = class_names(usable)
        pixels = usable["width"] * usable["height"]
        small, large = usable.loc[pixels.idxmin()], usable.loc[pixels.idxmax()]
        formats = usable["format"].value_counts().sort_index()
        lines += [f"classes: {len(classes)}" + ("" if classes else " (unlabelled files)"),
                  f"groups (source sites or sequences): {usable['group'].nunique()}",
                  f"sizes: {small['width']} x {small['height']} to {large['width']} x {large['height']} pixels",
                  "formats: " + ", ".join(f"{f} ({n})" for f, n in formats.items()),
                  "", f"  {'class':<16} {'images':>6} {'groups':>6}"]
        per_class = usable.groupby("label").agg(images=("path", "size"), groups=("group", "nunique"))
        lines += [f"  {label or '(none)':<16} {row['images']:>6} {row['groups']:>6}"
                  for label, row in per_class.iterrows()]
        single = [str(label) for label, n in per_class["groups"].items() if label and n < 2]
        if single:
            warning = (f"{len(single)} class(es) have a single source group and cannot be both trained on and held "
                       f"out: {', '.join(single[:10])}{' ...' if len(single) > 10 else ''}")
    if errors:
        lines += ["", f"unreadable files ({len(errors)}):", *(f"  {error}" for error in errors)]
    return "\n".join(lines), warning
