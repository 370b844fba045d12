"""Decoding benchmark: the committed decoder (soundfile for every format) against soundfile + PyAV.

Usage::

    python bench/decode.py [--data ../shared/data] [--esc50 13] [--rounds 3] [--json OUT]

Encodes real recordings (the soundscapes and some ESC-50 clips) into a
temporary folder with Debian's ``lame`` (CBR 128 kbps; VBR ``-V 4`` with its
Xing/LAME frame; VBR ``-V 4 -t`` without it) and ``ffmpeg`` (AAC in ``.m4a``,
written with ``+faststart`` as phones do, so that a cut copy keeps its index;
Opus), plus two cut copies of each file: the last 0.5 % of the bytes cut off
(as the field recordings and Xeno-canto downloads that the old decoder
refused, a few frames short of their header) and the second half cut off.
Then prints one table, side by side in one run, for each encoding:

* how many files ``check`` accepts: the OLD decoder (``audio.py`` of the
  commit before PyAV (:data:`OLD_REVISION`), loaded from ``git show`` with its extension list) and
  the new one, and how many of those the new one warns about;
* the largest difference between the duration ``check`` returns and the
  reference: the source WAV for complete files, the samples the ``ffmpeg``
  command line decodes for cut copies;
* decode speed in audio seconds per second (whole file to float32, no
  resampling, best of ``--rounds``) of soundfile and of PyAV, where
  soundfile can read the format.

Then the time of a 4 s range read at several offsets of a 60 s MP3 by seeking
and by decoding from the start, which sets ``decode.SEEK_BEYOND_SECONDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import soundfile as sf

from echoengine import audio, decode
from echoengine.errors import AudioError

ROOT = Path(__file__).resolve().parents[1]
OLD_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")  # the committed AUDIO_EXTENSIONS
ENCODINGS = {
    "lame CBR 128k": ("mp3", ["lame", "--quiet", "-b", "128"]),
    "lame VBR -V4 (Xing)": ("mp3", ["lame", "--quiet", "-V", "4"]),
    "lame VBR -V4 -t (no Xing)": ("mp3", ["lame", "--quiet", "-V", "4", "-t"]),
    "ffmpeg AAC .m4a": ("m4a", ["ffmpeg", "-c:a", "aac", "-b:a", "96k", "-movflags", "+faststart"]),
    "ffmpeg Opus": ("opus", ["ffmpeg", "-c:a", "libopus", "-b:a", "48k"]),
}
CUTS = {"": None, ", last 0.5 % cut": 0.995, ", half cut": 0.5}


# The last commit whose audio.py decoded everything with soundfile (libsndfile).
OLD_REVISION = "d8c5640"


def old_audio() -> types.ModuleType:
    """``src/echoengine/audio.py`` as committed at :data:`OLD_REVISION`, as a module of its own."""
    try:
        source = subprocess.run(["git", "show", f"{OLD_REVISION}:src/echoengine/audio.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"cannot read the committed audio.py with git ({exc}): run this in the project's checkout")
    module = types.ModuleType("echoengine_audio_head")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{OLD_REVISION}:src/echoengine/audio.py", "exec"), module.__dict__)
    module.AUDIO_EXTENSIONS = OLD_EXTENSIONS
    return module


def sources(data: Path, esc50: int) -> list[Path]:
    scapes = sorted(p for p in (data / "soundscapes").iterdir() if p.suffix in (".flac", ".ogg"))
    clips = sorted((data / "esc50-subset" / "audio").glob("*.flac"))
    return scapes + clips[:: max(1, len(clips) // esc50)][:esc50]


def encode_all(files: list[Path], folder: Path) -> dict[str, list[tuple[Path, float]]]:
    """Each encoding's files (complete and cut), with their reference duration."""
    made: dict[str, list[tuple[Path, float]]] = {}
    for i, source in enumerate(files):
        y, rate = sf.read(source, dtype="float32")
        wav = folder / f"{i:02d}.wav"
        sf.write(wav, y, rate, subtype="PCM_16")  # lame reads WAV, not FLAC or Ogg
        for k, (name, (extension, command)) in enumerate(ENCODINGS.items()):
            out = folder / f"{i:02d}_{k}.{extension}"
            if command[0] == "lame":
                subprocess.run([*command, str(wav), str(out)], check=True)
            else:
                subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), *command[1:],
                                str(out)], check=True)
            data = out.read_bytes()
            for cut, keep in CUTS.items():
                if keep is None:
                    made.setdefault(name + cut, []).append((out, len(y) / rate))
                    continue
                copy = out.with_name(f"{out.stem}_{keep}{out.suffix}")
                copy.write_bytes(data[: int(len(data) * keep)])
                made.setdefault(name + cut, []).append((copy, ffmpeg_seconds(copy)))
    return made


def ffmpeg_seconds(path: Path) -> float:
    """Seconds of audio the ffmpeg command line decodes from a file (nan when it decodes none)."""
    run = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "quiet", "-i", str(path), "-ac", "1", "-f", "f32le", "-"],
                         capture_output=True)
    try:
        rate = decode.probe(path).sample_rate
    except AudioError:
        return float("nan")
    return len(run.stdout) / 4 / rate if run.stdout else float("nan")


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def accepted(check, files: list[tuple[Path, float]]) -> tuple[int, float, int]:
    """Files ``check`` accepts, their largest duration error against the reference, and warnings logged."""
    counter = _Count()
    logging.getLogger("echoengine").addHandler(counter)
    errors = []
    try:
        for path, reference in files:
            try:
                errors.append(abs(check(path).duration - reference))
            except AudioError:
                continue
    finally:
        logging.getLogger("echoengine").removeHandler(counter)
    known = [e for e in errors if e == e]  # nan: the ffmpeg CLI decoded nothing either
    return len(errors), max(known, default=float("nan")), counter.count


def speed(read, files: list[Path], rounds: int) -> float:
    """Audio seconds decoded per second of the faster round; nan when ``read`` fails on a file."""
    best = float("inf")
    for _ in range(rounds):
        seconds, start = 0.0, time.perf_counter()
        for path in files:
            try:
                y, rate = read(path)
            except Exception:  # soundfile cannot read the format
                return float("nan")
            seconds += len(y) / rate
        best = min(best, time.perf_counter() - start)
    return seconds / best


def _sf_read(path: Path) -> tuple[np.ndarray, int]:
    return sf.read(path, dtype="float32")


def _av_read(path: Path) -> tuple[np.ndarray, int]:
    return decode.read(path), decode.probe(path).sample_rate


def range_times(path: Path, rounds: int) -> list[tuple[float, float, float]]:
    """(offset, ms to read 4 s by seeking, ms by decoding from the start) for offsets across a file."""
    rows = []
    for offset in (2.0, 5.0, 10.0, 20.0, 40.0, 55.0):
        rate = decode.probe(path).sample_rate
        start, stop = round(offset * rate), round((offset + 4) * rate)
        times = []
        for seek in (True, False):
            old, decode.SEEK_BEYOND_SECONDS = decode.SEEK_BEYOND_SECONDS, 0.0
            try:
                best = min(_timed(decode.read, path, start, stop, seek=seek) for _ in range(rounds))
            finally:
                decode.SEEK_BEYOND_SECONDS = old
            times.append(best * 1e3)
        rows.append((offset, *times))
    return rows


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--esc50", type=int, default=13, help="ESC-50 clips besides the 7 soundscapes (default 13)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    for tool in ("lame", "ffmpeg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install Debian's lame and ffmpeg")
    if not (args.data / "soundscapes").is_dir():
        sys.exit(f"real data not found at {args.data}")
    old = old_audio()
    files = sources(args.data, args.esc50)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        made = encode_all(files, Path(tmp))
        for name, group in made.items():
            paths = [p for p, _ in group]
            old_ok, old_err, _ = accepted(old.check, group)
            new_ok, new_err, warned = accepted(audio.check, group)
            complete = "cut" not in name
            rows.append({"encoding": name, "files": len(group), "old_ok": old_ok, "new_ok": new_ok, "warned": warned,
                         "old_max_error_s": old_err, "new_max_error_s": new_err,
                         "sf_speed": speed(_sf_read, paths, args.rounds) if complete else float("nan"),
                         "pyav_speed": speed(_av_read, paths, args.rounds) if complete else float("nan")})
        long_mp3 = next(p for p, _ in made["lame VBR -V4 (Xing)"] if sf.info(p).duration > 55)
        ranges = range_times(long_mp3, args.rounds)
    seconds = sum(sf.info(f).duration for f in files)
    print(f"{len(files)} real recordings ({seconds:.0f} s: {', '.join(f.name for f in files[:7])} and "
          f"{len(files) - 7} ESC-50 clips); reference: the source for complete files, the ffmpeg CLI for cut ones")
    print(f"{'encoding':42} {'files':>5} {'accepted old/new':>16} {'warned':>6} "
          f"{'max |err| s old/new':>21} {'x realtime sf/PyAV':>19}")
    for r in rows:
        speeds = f"{_fmt(r['sf_speed'], 0)}/{_fmt(r['pyav_speed'], 0)}" if "cut" not in r["encoding"] else ""
        print(f"{r['encoding']:42} {r['files']:>5} {r['old_ok']:>7}/{r['new_ok']:<8} {r['warned']:>6} "
              f"{_fmt(r['old_max_error_s']):>10}/{_fmt(r['new_max_error_s']):<10} {speeds:>19}")
    print(f"\n4 s range of {long_mp3.name} (60 s VBR MP3), ms: offset  seek  from-start")
    for offset, seek, start in ranges:
        print(f"{offset:>48.0f} s {seek:>5.1f} {start:>11.1f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ranges_ms": ranges}, indent=1))


if __name__ == "__main__":
    main()
