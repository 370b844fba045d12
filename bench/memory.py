"""Peak memory of ``echoengine predict``, ``predict --onnx`` and ``detect`` on one long recording.

Usage::

    python bench/memory.py [--hours 3] [--tmp /tmp]

A synthetic 48 kHz recording of ``--hours`` (a minute of noise and tones
repeated, 16-bit FLAC, as ``bench/detect_throughput.py`` writes it) and a
small bundle (small_cnn on the Echo front end, trained for one epoch on the
synthetic calls, exported to ONNX) are made in a temporary folder, removed at
the end. Each command then runs alone in a fresh process, and its peak
resident memory (libraries included: about 0.9 GiB of them) and wall time
are printed in one table beside the target: under 1.5 GiB for a 3 h file,
whatever its length. ``predict`` decodes each file block by block and scores
windows as they come; ``predict --onnx`` feeds the graph a minute of windows
at a time (:data:`echoengine.scoring.CHUNK_SECONDS`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detect_throughput import long_recording
from echoengine import catalog
from echoengine.config import EchoConfig
from echoengine.exporting import export_onnx
from echoengine.synthetic import make_dataset
from echoengine.training import fit

TARGET_GIB = 1.5


def make_bundle(folder: Path) -> Path:
    """small_cnn on the Echo front end, one epoch on synthetic calls, with its model.onnx."""
    data = make_dataset(folder / "calls", classes=4, files_per_class=6, seed=0)
    config = EchoConfig().replace(model={"backbone": "small_cnn", "head": "linear"},
                                  train={"epochs": 1, "device": "cpu"})
    table, _ = catalog.scan(catalog.load_catalog(data), config.audio)
    out = folder / "bundle"
    fit(table, table, catalog.class_names(table), config, out, progress=False, log=lambda line: None)
    export_onnx(out, check=[table["path"].iloc[0]])
    return out


# The command line's main in a fresh process, then its own peak (VmHWM: since this process started; the
# ru_maxrss of a child counts the memory of the process that forked it, here the one that trained the bundle).
MEMORY_SCRIPT = """
import sys
from echoengine.cli import main
status = main(sys.argv[2:])
peak = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))
open(sys.argv[1], 'w').write(str(peak * 1024))
sys.exit(status)
"""


def peak_run(arguments: list[str], folder: Path, name: str) -> tuple[int, float]:
    """Run ``echoengine ARGUMENTS`` alone in a fresh process; its peak resident memory (bytes) and wall seconds."""
    log, peak = folder / f"{name}.log", folder / f"{name}.peak"
    start = time.perf_counter()
    with open(log, "w") as out:
        status = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(peak), *arguments], stdout=out,
                                stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if status:
        sys.exit(f"echoengine {' '.join(arguments)} failed ({status}):\n{log.read_text()[-2000:]}")
    return int(peak.read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0, help="length of the recording (default 3)")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temporary folder goes (about 0.3 GB/h)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        bundle = str(make_bundle(tmp))
        recording = str(long_recording(tmp / "long.flac", args.hours))
        runs = {"predict": ["predict", bundle, recording, "--no-cache"],
                "predict --onnx": ["predict", bundle, recording, "--onnx"],
                "detect": ["detect", bundle, recording, "--out", str(tmp / "detections"), "--quiet"]}
        for name, arguments in runs.items():
            peak, seconds = peak_run(arguments, tmp, name.replace(" ", "_"))
            rows.append((name, peak, seconds))
            print(f"done: {name}", file=sys.stderr, flush=True)
    hours = f"{args.hours:g} h"
    print(f"small_cnn on the Echo front end, one {hours} 48 kHz FLAC recording, each command in a fresh process\n")
    print(f"{'command':<16} {'peak RSS':>10} {'target':>10} {'within':>7} {'wall':>9} {'audio/wall':>11}")
    for name, peak, seconds in rows:
        within = "yes" if peak < TARGET_GIB * 2**30 else "NO"
        print(f"{name:<16} {peak / 2**30:>6.2f} GiB {f'< {TARGET_GIB} GiB':>10} {within:>7} {seconds:>7.0f} s "
              f"{args.hours * 3600 / seconds:>10.0f}x")


if __name__ == "__main__":
    main()
