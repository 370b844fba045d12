"""Sensor messages: the JSON a field sensor publishes, checked and turned into an :class:`AudioMessage`.

Two kinds are read, told apart by their fields:

- **Project Echo's sensor message**, as its simulator and recorders send it:
  ``timestamp`` (seconds since 1970 or an ISO 8601 string), ``sensorId``,
  ``microphoneLLA`` ``[lat, lon, alt]``, ``audioClip`` (the recording,
  base64) and ``audioFile`` (a file name, or a mode such as
  ``"Recording_Mode"``). Its ``animal*`` fields (the simulator's ground
  truth), ``mode`` and ``sampleRate`` are ignored.
- **Our own versioned message**: ``{"schema": "echoengine.audio/1",
  "sensor_id", "recorded_at" (ISO 8601), "lat", "lon", "alt", "audio"
  (base64)}``, or ``"audio_url"`` instead of ``"audio"``: a local file
  under the folder the server allows (a path or a ``file://`` URL), or an
  ``http(s)://`` URL when the server gives a fetcher.

Everything but the audio is optional; what is given must be valid. A message
that cannot be used raises :class:`MessageError`, whose text is one line
saying why. This module is pure (no network, no broker); reading a local
``audio_url`` is its only I/O.

Examples
--------
>>> import base64, json
>>> clip = base64.b64encode(b"RIFF\\x24\\x00\\x00\\x00WAVEfmt ").decode()
>>> message = parse_message(json.dumps({"timestamp": 1714545000, "sensorId": "otways-3",
...     "microphoneLLA": [-38.78, 143.55, 95.0], "audioClip": clip, "audioFile": "Recording_Mode"}).encode())
>>> message.sensor_id, message.recorded_at.isoformat(), message.lat, message.filename
('otways-3', '2024-05-01T06:30:00+00:00', -38.78, 'otways-3_20240501T063000Z.wav')
>>> parse_message(b'{"schema": "echoengine.audio/2", "audio": ""}')
Traceback (most recent call last):
...
echoengine.service.messages.MessageError: unsupported schema version 'echoengine.audio/2': ...
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from echoengine.errors import EchoError

__all__ = ["MAX_MESSAGE_BYTES", "SCHEMA", "AudioMessage", "MessageError", "parse_message"]

SCHEMA = "echoengine.audio/1"
MAX_MESSAGE_BYTES = 64 << 20
"""The default limit on a message's payload and on its audio, in bytes (64 MiB)."""

PROJECT_ECHO = "projectecho"
_PROJECT_ECHO_FIELDS = ("audioClip", "sensorId", "microphoneLLA", "audioFile")
_LAST_EPOCH_SECOND = 32503680000  # 3000-01-01: larger numbers are milliseconds or junk
_MAX_SENSOR_ID = 200
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


class MessageError(EchoError, ValueError):
    """A sensor message cannot be used; ``str(error)`` is a one-line reason.

    Examples
    --------
    >>> str(MessageError("missing audio: no 'audioClip'"))
    "missing audio: no 'audioClip'"
    """


@dataclass(frozen=True)
class AudioMessage:
    """One recording a sensor sent, ready to be queued like an upload.

    Parameters
    ----------
    audio : bytes
        The audio file's bytes, as sent (WAV, FLAC, MP3...; not decoded here).
    filename : str
        A safe file name (letters, digits, ``._-``) whose extension matches the
        audio's format where it can be told from its first bytes.
    sensor_id : str or None
        The sensor's name.
    recorded_at : datetime or None
        When the recording started, timezone-aware, in UTC (a time without an
        offset is taken as UTC).
    lat, lon, alt : float or None
        The microphone's position: degrees, degrees, metres.
    kind : str
        Which message it came from: ``"echoengine.audio/1"`` or ``"projectecho"``.

    Examples
    --------
    >>> AudioMessage(b"RIFF", "a.wav", sensor_id="pond")
    AudioMessage(filename='a.wav', sensor_id='pond', recorded_at=None, lat=None, lon=None, alt=None,
                 kind='echoengine.audio/1')
    """

    audio: bytes = field(repr=False)
    filename: str
    sensor_id: str | None = None
    recorded_at: datetime | None = None
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    kind: str = SCHEMA


def parse_message(payload: bytes | str, *, fetch: Callable[[str], bytes] | None = None,
                  audio_root: str | Path | None = None, max_bytes: int = MAX_MESSAGE_BYTES) -> AudioMessage:
    """Check a sensor message and return its recording and metadata.

    Parameters
    ----------
    payload : bytes or str
        The message as received: a JSON object (UTF-8).
    fetch : callable, optional
        ``fetch(url) -> bytes`` for ``http(s)://`` values of ``audio_url``;
        without one such messages are refused. It should enforce its own
        timeout; its exceptions become :class:`MessageError`.
    audio_root : str or Path, optional
        The folder a local ``audio_url`` may point into (relative paths are
        taken from it). Without one, local ``audio_url`` values are refused;
        paths that resolve outside it (``..``, symbolic links) always are.
    max_bytes : int
        The largest payload, and the largest audio, accepted.

    Returns
    -------
    AudioMessage

    Raises
    ------
    MessageError
        Not JSON, not an object, an unknown kind or schema version, missing or
        empty audio, bad base64, bad coordinates, a bad timestamp or sensor id,
        a refused or unreadable ``audio_url``, or a payload over ``max_bytes``.

    Examples
    --------
    >>> import base64, json
    >>> audio = base64.b64encode(b"fLaC" + bytes(40)).decode()
    >>> parse_message(json.dumps({"schema": "echoengine.audio/1", "sensor_id": "pond-2", "lat": 52.1,
    ...                           "lon": 0.12, "recorded_at": "2024-05-01T08:30:00+02:00", "audio": audio}))
    AudioMessage(filename='pond-2_20240501T063000Z.flac', sensor_id='pond-2',
                 recorded_at=datetime.datetime(2024, 5, 1, 6, 30, tzinfo=datetime.timezone.utc),
                 lat=52.1, lon=0.12, alt=None, kind='echoengine.audio/1')
    >>> parse_message(b"hello")
    Traceback (most recent call last):
    ...
    echoengine.service.messages.MessageError: not JSON: Expecting value: line 1 column 1 (char 0)
    """
    if len(payload) > max_bytes:
        raise MessageError(f"payload too large: {len(payload)} bytes, the limit is {max_bytes}")
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MessageError(f"not JSON: {_one_line(error)}") from None
    if not isinstance(document, dict):
        raise MessageError(f"expected a JSON object, got {_json_type(document)}")
    if "schema" in document:
        return _parse_own(document, fetch=fetch, audio_root=audio_root, max_bytes=max_bytes)
    if any(name in document for name in _PROJECT_ECHO_FIELDS):
        return _parse_project_echo(document, max_bytes=max_bytes)
    raise MessageError(f"unknown message: expected a 'schema' field ({SCHEMA!r}) or Project Echo's 'audioClip' "
                       f"(fields received: {', '.join(sorted(map(str, document))[:8]) or 'none'})")


def _parse_project_echo(document: dict, *, max_bytes: int) -> AudioMessage:
    if document.get("audioClip") is None:
        raise MessageError("missing audio: no 'audioClip' in the Project Echo message")
    audio = _decode_base64(document["audioClip"], "audioClip", max_bytes)
    sensor_id = _sensor_id(document.get("sensorId"), "sensorId")
    recorded_at = _epoch_or_iso(document.get("timestamp"), "timestamp")
    lat, lon, alt = _lla(document.get("microphoneLLA"))
    hint = document.get("audioFile")
    filename = _filename(audio, hint if isinstance(hint, str) else None, sensor_id, recorded_at)
    return AudioMessage(audio, filename, sensor_id, recorded_at, lat, lon, alt, kind=PROJECT_ECHO)


def _parse_own(document: dict, *, fetch: Callable[[str], bytes] | None, audio_root: str | Path | None,
               max_bytes: int) -> AudioMessage:
    schema = document["schema"]
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith("echoengine.audio/"):
            raise MessageError(f"unsupported schema version {schema!r}: this server reads {SCHEMA!r}")
        raise MessageError(f"unknown schema {_short(schema)}: expected {SCHEMA!r}")
    sensor_id = _sensor_id(document.get("sensor_id"), "sensor_id")
    recorded_at = None
    if document.get("recorded_at") is not None:
        recorded_at = _iso_time(document["recorded_at"], "recorded_at")
    lat, lon, alt = _coordinates(document.get("lat"), document.get("lon"), document.get("alt"), "")
    audio, hint = _own_audio(document, fetch=fetch, audio_root=audio_root, max_bytes=max_bytes)
    filename = _filename(audio, hint, sensor_id, recorded_at)
    return AudioMessage(audio, filename, sensor_id, recorded_at, lat, lon, alt, kind=SCHEMA)


def _own_audio(document: dict, *, fetch: Callable[[str], bytes] | None, audio_root: str | Path | None,
               max_bytes: int) -> tuple[bytes, str | None]:
    """The audio of our own message and a file name hint: inline base64, or read from ``audio_url``."""
    inline, url = document.get("audio"), document.get("audio_url")
    if inline is not None and url is not None:
        raise MessageError("give either 'audio' or 'audio_url', not both")
    if inline is not None:
        return _decode_base64(inline, "audio", max_bytes), None
    if url is None:
        raise MessageError("missing audio: give 'audio' (base64) or 'audio_url'")
    if not isinstance(url, str) or not url.strip():
        raise MessageError(f"bad 'audio_url': expected a URL or a path, got {_short(url)}")
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(url, fetch, max_bytes), PurePosixPath(unquote(urlsplit(url).path)).name
    if scheme not in ("", "file"):
        raise MessageError(f"unsupported 'audio_url' scheme {scheme!r}: expected file://, a path or http(s)://")
    return _read_local(url, audio_root, max_bytes)


def _fetch_http(url: str, fetch: Callable[[str], bytes] | None, max_bytes: int) -> bytes:
    if fetch is None:
        raise MessageError("'audio_url' over http(s) is not enabled on this server: send the audio inline as 'audio'")
    try:
        audio = fetch(url)
    except MessageError:
        raise
    except Exception as error:  # whatever the fetcher raises: the message is skipped, not the bridge
        raise MessageError(f"cannot fetch 'audio_url' {_short(url)}: {_one_line(error)}") from None
    return _checked_audio(bytes(audio), "audio_url", max_bytes)


def _read_local(url: str, audio_root: str | Path | None, max_bytes: int) -> tuple[bytes, str]:
    """Read a local ``audio_url`` (a path or ``file://`` URL) that resolves inside ``audio_root``."""
    if audio_root is None:
        raise MessageError("a local 'audio_url' is refused: this server allows no audio folder; send 'audio' inline")
    parts = urlsplit(url)
    if parts.scheme.lower() == "file" and parts.netloc not in ("", "localhost"):
        raise MessageError(f"bad 'audio_url' {_short(url)}: file:// URLs name no host")
    text = unquote(parts.path) if parts.scheme else url
    root = Path(audio_root).resolve()
    try:
        path = (root / text).resolve()  # an absolute text replaces root; symbolic links and '..' are resolved
    except (OSError, ValueError, RuntimeError) as error:
        raise MessageError(f"bad 'audio_url' {_short(url)}: {_one_line(error)}") from None
    if not path.is_relative_to(root):
        raise MessageError(f"'audio_url' {_short(url)} is refused: it lies outside the server's audio folder")
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise MessageError(f"cannot read 'audio_url' {_short(url)}: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MessageError(f"cannot read 'audio_url' {_short(url)}: not a regular file")
        if info.st_size > max_bytes:
            raise MessageError(f"audio too large: {info.st_size} bytes in 'audio_url', the limit is {max_bytes}")
        audio = file.read(max_bytes + 1)
    return _checked_audio(audio, "audio_url", max_bytes), path.name


def _decode_base64(value: object, name: str, max_bytes: int) -> bytes:
    """Standard base64 (line breaks and a ``data:...;base64,`` prefix allowed); anything else is refused."""
    if not isinstance(value, str):
        raise MessageError(f"bad base64 in {name!r}: expected a string, got {_json_type(value)}")
    if value.startswith("data:") and ";base64," in value[:200]:
        value = value.partition(";base64,")[2]
    text = "".join(value.split())
    if len(text) // 4 * 3 > max_bytes:
        raise MessageError(f"audio too large: about {len(text) // 4 * 3} bytes in {name!r}, the limit is {max_bytes}")
    try:
        audio = base64.b64decode(text, validate=True)
    except ValueError as error:  # binascii.Error, or characters outside ASCII
        raise MessageError(f"bad base64 in {name!r}: {_one_line(error)}") from None
    return _checked_audio(audio, name, max_bytes)


def _checked_audio(audio: bytes, name: str, max_bytes: int) -> bytes:
    if not audio:
        raise MessageError(f"missing audio: {name!r} is empty")
    if len(audio) > max_bytes:
        raise MessageError(f"audio too large: {len(audio)} bytes in {name!r}, the limit is {max_bytes}")
    return audio


def _sensor_id(value: object, name: str) -> str | None:
    """A sensor's name: a string (or an integer, as some Project Echo sensors send), printable, not too long."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise MessageError(f"bad sensor id in {name!r}: expected a string, got {_json_type(value)}")
    value = value.strip()
    if len(value) > _MAX_SENSOR_ID or not value.isprintable():
        raise MessageError(f"bad sensor id in {name!r}: expected up to {_MAX_SENSOR_ID} printable characters")
    return value or None


def _epoch_or_iso(value: object, name: str) -> datetime | None:
    """Project Echo's timestamp: seconds since 1970 (a number or a numeric string) or an ISO 8601 string."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return _iso_time(value, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageError(f"bad timestamp in {name!r}: expected seconds since 1970 or an ISO 8601 string, "
                           f"got {_json_type(value)}")
    if not (math.isfinite(value) and 0 <= value < _LAST_EPOCH_SECOND):
        raise MessageError(f"bad timestamp in {name!r}: {value!r} is not seconds since 1970 "
                           "(milliseconds? divide by 1000)")
    return datetime.fromtimestamp(value, tz=UTC)


def _iso_time(value: object, name: str) -> datetime:
    """An ISO 8601 time in UTC; a time without an offset is taken as UTC."""
    if not isinstance(value, str):
        raise MessageError(f"bad timestamp in {name!r}: expected an ISO 8601 string, got {_json_type(value)}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise MessageError(f"bad timestamp in {name!r}: {_short(value)} is not ISO 8601 "
                           "(e.g. 2024-05-01T06:30:00Z)") from None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 moved past the calendar's end by its offset
        raise MessageError(f"bad timestamp in {name!r}: {_short(value)} is not a time a recording was made "
                           "(years 1900 to 2200)") from None


def _lla(value: object) -> tuple[float | None, float | None, float | None]:
    """Project Echo's ``microphoneLLA``: ``[lat, lon]``, ``[lat, lon, alt]``, or its backend's object form."""
    if value is None:
        return None, None, None
    if isinstance(value, dict):
        return _coordinates(value.get("latitude"), value.get("longitude"), value.get("altitude"), "microphoneLLA")
    if isinstance(value, list) and len(value) in (2, 3):
        return _coordinates(value[0], value[1], value[2] if len(value) == 3 else None, "microphoneLLA")
    raise MessageError(f"bad coordinates in 'microphoneLLA': expected [lat, lon, alt], got {_short(value)}")


def _coordinates(lat: object, lon: object, alt: object, where: str) -> tuple[float | None, float | None, float | None]:
    """Latitude and longitude (both or neither) in range, and an optional altitude: finite numbers."""
    place = f" in {where!r}" if where else ""
    if (lat is None) != (lon is None):
        raise MessageError(f"bad coordinates{place}: give both lat and lon, or neither")
    values = []
    for name, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0), ("alt", alt, math.inf)):
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise MessageError(f"bad coordinates{place}: {name} must be a finite number, got {_short(value)}")
            if abs(value) > limit:
                raise MessageError(f"bad coordinates{place}: {name} {value} is outside [-{limit:g}, {limit:g}]")
            value = float(value)
        values.append(value)
    return values[0], values[1], values[2]


def _filename(audio: bytes, hint: str | None, sensor_id: str | None, recorded_at: datetime | None) -> str:
    """A safe file name: the hint's stem if it names a file, else sensor and time; the extension of the content."""
    hinted = PurePosixPath(hint.replace("\\", "/")) if hint else None
    if hinted is not None and not hinted.suffix:
        hinted = None  # a mode such as "Recording_Mode", not a file name
    stem = hinted.stem if hinted is not None else "_".join(
        part for part in (sensor_id, recorded_at and f"{recorded_at:%Y%m%dT%H%M%SZ}") if part)
    stem = _UNSAFE_NAME.sub("_", stem).strip("._")[:100] or "recording"
    extension = _audio_extension(audio) or (hinted.suffix.lower() if hinted is not None else "") or ".wav"
    return stem + (extension if re.fullmatch(r"\.[a-z0-9]{1,5}", extension) else ".wav")


def _audio_extension(audio: bytes) -> str | None:
    """The file extension that a file's first bytes show (WAV, FLAC, Ogg, MP3, M4A, AIFF), if any."""
    head = audio[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return ".wav"
    if head[:4] == b"fLaC":
        return ".flac"
    if head[:4] == b"OggS":
        return ".ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return ".mp3"
    if head[4:8] == b"ftyp":
        return ".m4a"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return ".aiff"
    return None


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__
