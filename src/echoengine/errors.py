"""The exceptions that echoengine raises on bad input.

Every error a user can cause derives from :class:`EchoError`, so a caller can
catch one type. Messages say what was received, what was expected and, where
it helps, how to fix it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AudioError", "ConfigError", "DataError", "EchoError", "ImageError"]


class EchoError(Exception):
    """Base class of every error echoengine raises on bad input."""


class ConfigError(EchoError, ValueError):
    """A configuration value is invalid, unknown or inconsistent."""


class AudioError(EchoError):
    """An audio file cannot be used.

    Parameters
    ----------
    path : str or Path
        The file that failed.
    reason : str
        One line saying why, e.g. ``"empty file (0 bytes)"``.

    Examples
    --------
    >>> str(AudioError("rain.wav", "file not found"))
    'rain.wav: file not found'
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(EchoError, ValueError):
    """A dataset, catalog or split request cannot be satisfied."""


class ImageError(AudioError):
    """An image file (a photo of a photo dataset) cannot be used.

    A kind of :class:`AudioError` (an unusable input file), so that every
    place that reports a bad file and goes on with the rest does so for
    photos too.

    Examples
    --------
    >>> str(ImageError("fox.jpg", "not an image Pillow can read"))
    'fox.jpg: not an image Pillow can read'
    """
