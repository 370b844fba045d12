"""The audio store: uploaded recordings as files named by their content hash, under ``DIR/audio/``.

A recording is kept as ``DIR/audio/<first two hex digits>/<sha256><extension>``:
the same content is one file whatever its name, a client's file name never
becomes a path, and the database holds only the name. A file arrives in
``DIR/audio/incoming/`` under a random name, is hashed as it is written,
checked by decoding it whole (:func:`echoengine.audio.check`, with the
served model's audio settings), and is renamed into place; a kill at any
moment leaves either nothing or a whole file (an orphan of an upload killed
before its row was written is harmless: the same content is renamed over it).

Examples
--------
>>> import hashlib, tempfile, soundfile as sf
>>> store = AudioStore(tempfile.mkdtemp())
>>> incoming = store.incoming(".wav")
>>> sf.write(incoming, np.zeros(8000, "float32"), 16000)
>>> stored = store.keep(incoming, hashlib.sha256(incoming.read_bytes()).hexdigest(), ".wav")
>>> stored.name.endswith(".wav"), stored.info.duration, store.path(stored.name).is_file()
(True, 0.5, True)
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from echoengine import audio
from echoengine.config import AUDIO_EXTENSIONS, AudioConfig
from echoengine.errors import AudioError, EchoError

__all__ = ["AudioStore", "Stored", "audio_extension"]

# What libsndfile calls the formats it can tell from their content (a file sent without a usable name).
_SNIFFED = {"WAV": ".wav", "WAVEX": ".wav", "FLAC": ".flac", "OGG": ".ogg", "AIFF": ".aiff", "MPEG": ".mp3",
            "MP3": ".mp3"}
_STORED_NAME = re.compile(r"^[0-9a-f]{64}\.[a-z0-9]{1,5}$")


def audio_extension(filename: str, path: Path) -> str:
    """The extension to store a file under: its format's as libsndfile reads it from the content, else its name's.

    (Formats libsndfile cannot read, such as M4A or Opus, are decoded by
    PyAV, chosen by the extension: for them the name's is taken.)

    Raises
    ------
    AudioError
        Neither the content nor the name says an audio format.

    Examples
    --------
    >>> audio_extension("pond.FLAC", Path("not-read-here"))
    '.flac'
    """
    try:
        sniffed = _SNIFFED.get(sf.info(str(path)).format)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        sniffed = None
    extension = os.path.splitext(filename)[1].lower()
    if sniffed is None and extension not in AUDIO_EXTENSIONS:
        raise AudioError(filename or "upload", f"not a readable audio file (supported: {', '.join(AUDIO_EXTENSIONS)})")
    return sniffed or extension


@dataclass(frozen=True)
class Stored:
    """A file in the store: its name (``<sha256><extension>``), hash and what decoding it found."""

    name: str
    sha256: str
    size: int
    info: audio.AudioInfo


class AudioStore:
    """Files of recordings under ``root/audio/``, by content hash.

    Parameters
    ----------
    root : path
        The store folder (created if needed); audio goes to ``root/audio/``.
    audio_config : AudioConfig, optional
        What a file must pass to be kept (the served model's: shortest
        duration, channel); the defaults when omitted.
    """

    def __init__(self, root: str | Path, audio_config: AudioConfig | None = None) -> None:
        self.root = Path(root)
        self.folder = self.root / "audio"
        self.audio_config = audio_config or AudioConfig()
        (self.folder / "incoming").mkdir(parents=True, exist_ok=True)

    def incoming(self, extension: str = "") -> Path:
        """A fresh path in ``audio/incoming/`` to write an arriving file to (with ``extension``, for decoding)."""
        return self.folder / "incoming" / f"{uuid.uuid4().hex}{extension}"

    def path(self, name: str) -> Path:
        """The file of a stored name; an EchoError for anything that is not one (never a path outside the store)."""
        if not _STORED_NAME.match(name):
            raise EchoError(f"{name!r} is not the name of a stored recording")
        return self.folder / name[:2] / name

    def keep(self, incoming: Path, sha256: str, extension: str) -> Stored:
        """Check an arrived file by decoding it whole, and rename it into the store; it is removed if unusable.

        Raises
        ------
        AudioError
            The file cannot be decoded or is too short (its reason says why).
        """
        name = f"{sha256}{extension}"
        try:
            checked = incoming.with_suffix(extension)
            if checked != incoming:
                os.replace(incoming, checked)
                incoming = checked
            info = audio.check(incoming, self.audio_config)
            size = incoming.stat().st_size
            target = self.path(name)
            target.parent.mkdir(exist_ok=True)
            os.replace(incoming, target)
        finally:
            incoming.unlink(missing_ok=True)
        return Stored(name, sha256, size, info)

    def clear_incoming(self) -> int:
        """Remove what uploads killed mid-way left in ``audio/incoming/``; how many files."""
        leftovers = [p for p in (self.folder / "incoming").iterdir() if p.is_file()]
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def clip(self, name: str, *, start: float, end: float) -> tuple[np.ndarray, int]:
        """Samples ``start`` to ``end`` seconds of a stored recording (mono, its own rate) and that rate."""
        path = self.path(name)
        rate = audio.info(path).sample_rate
        config = dataclasses.replace(self.audio_config, sample_rate=rate)
        return audio.load(path, config, offset=start, duration=max(0.0, end - start)), rate

