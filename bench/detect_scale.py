"""Detection beyond one process: plain ``detect`` against Ray with 1 and 2 workers (and Ray Data), side by side.

Usage::

    python bench/detect_scale.py [--data ../shared/data/soundscapes] [--rounds 3] [--no-ray-data]

One bundle (``small_cnn`` + the Echo head on the Echo front end: 48 kHz,
260 mels, 260 x 260 x 3 images; 49 classes, random weights: speed does not
depend on them, and nothing is downloaded) runs over every file of the
folder (the 103 soundscape files, 19.5 min) in alternating rounds:

* **plain**: :func:`echoengine.detection.detect` in this process, torch on 1 thread;
* **ray 1 / ray 2**: :func:`echoengine.raydetect.detect_on_ray` with a local Ray
  instance of 1 or 2 CPUs (one torch thread per task), its start-up included;
* **ray data 2** (the alternative the engine was chosen against): Ray Data
  ``map_batches`` over the same chunks with an actor pool of 2 that loads the
  model once per actor, the scores returned as Arrow rows.

Each run writes every output (the Ray Data row stops at the scores). The
table gives the best round of each: wall seconds, Ray's start-up (until the
cluster answers), the first file back (start-up, workers importing torch and
loading the model, the first chunk), audio seconds per wall second end to
end and in the steady state (from the first file's record to the last one's,
by the records' times in ``OUT/.detect/``), and the steady-state time per
file against plain; the load average before and after each round shows how
busy the shared machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from echoengine import audio, ledger
from echoengine.bundle import load_bundle, save_atomic
from echoengine.config import EchoConfig
from echoengine.detection import DetectOptions, detect
from echoengine.layout import write_metadata
from echoengine.models import build_model
from echoengine.raydetect import RayOptions, chunk_files, detect_on_ray, ray_session, score_chunk
from echoengine.sources import find_audio

CLASSES = [f"class_{i:02d}" for i in range(49)]


def make_bundle(folder: Path) -> Path:
    """small_cnn + the Echo head on the Echo front end, random weights."""
    config = EchoConfig().replace(model={"backbone": "small_cnn", "head": "echo"})
    write_metadata(folder, config, CLASSES)
    torch.manual_seed(0)
    save_atomic(build_model(config.model, len(CLASSES)).state_dict(), folder / "weights.pt")
    return folder


DURATIONS: dict[str, float] = {}  # ledger key -> seconds of audio, filled by main()


def arrivals(out: Path, started: float) -> dict:
    """When the first file was recorded (after the start), and the steady state: the files recorded after it."""
    records = sorted((p.stat().st_mtime, p.stem) for p in (out / ".detect").glob("*.npz"))
    return {"first": records[0][0] - started, "steady": records[-1][0] - records[0][0], "recorded": len(records),
            "steady_audio": sum(DURATIONS[key] for _, key in records[1:])}


def run_plain(bundle, files, out: Path) -> dict:
    started, clock = time.perf_counter(), time.time()
    detect([bundle], files, out, options=DetectOptions(), progress=False, log=lambda line: None)
    return {"wall": time.perf_counter() - started, "startup": 0.0, **arrivals(out, clock)}


def run_ray(bundle, files, out: Path, workers: int) -> dict:
    marks: dict[str, float] = {}
    started, clock = time.perf_counter(), time.time()

    def log(line: str) -> None:
        marks.setdefault("startup", time.perf_counter() - started) if line.startswith("ray:") else None

    detect_on_ray([bundle], files, out, options=DetectOptions(), ray_options=RayOptions(workers=workers),
                  progress=False, log=log)
    return {"wall": time.perf_counter() - started, "startup": marks.get("startup", 0.0), **arrivals(out, clock)}


class _ChunkScorer:
    """A Ray Data actor: the model loaded once (by the first chunk), each chunk's windows out as rows."""

    def __init__(self, folders: tuple[str, ...]) -> None:
        self.folders = folders

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        rows: dict[str, list] = {"index": [], "start": [], "scores": []}
        for chunk in batch["chunk"]:
            for index, record in score_chunk(self.folders, DetectOptions(), 1, [tuple(f) for f in json.loads(chunk)]):
                if isinstance(record, dict):
                    rows["index"] += [index] * len(record["start"])
                    rows["start"] += record["start"].tolist()
                    rows["scores"] += list(record["scores"].astype(np.float32))
        return {"index": np.array(rows["index"]), "start": np.array(rows["start"]), "scores": np.stack(rows["scores"])}


def run_ray_data(bundle, files, workers: int) -> dict:
    started = time.perf_counter()
    todo = list(enumerate(files))
    seconds = [audio.info(f).duration for f in files]
    chunks = chunk_files(todo, seconds, chunk_seconds=sum(seconds) / (4 * workers))
    with ray_session(RayOptions(workers=workers), log=lambda line: None) as ray:
        startup = time.perf_counter() - started
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items([{"chunk": json.dumps(c)} for c in chunks], override_num_blocks=len(chunks))
        scored = dataset.map_batches(_ChunkScorer, fn_constructor_args=((str(bundle.path.resolve()),),),
                                     batch_size=1, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=workers))
        windows = sum(len(batch["index"]) for batch in scored.iter_batches(batch_size=None))
    assert windows > 0
    return {"wall": time.perf_counter() - started, "startup": startup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/soundscapes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ray-data", action="store_true", help="leave out the Ray Data row")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (the real recordings of ../shared/data)")
    torch.set_num_threads(1)  # as each Ray task: on 2 shared cores, 2 threads wait for each other at every layer
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    files = find_audio([args.data])
    DURATIONS.update({ledger.key(f): audio.info(f).duration for f in files})
    total = sum(DURATIONS.values())
    work = Path(tempfile.mkdtemp(prefix="detect-scale-"))
    bundle = load_bundle(make_bundle(work / "bundle"))
    runs = {"plain": lambda out: run_plain(bundle, files, out),
            "ray 1 worker": lambda out: run_ray(bundle, files, out, 1),
            "ray 2 workers": lambda out: run_ray(bundle, files, out, 2)}
    if not args.no_ray_data:
        runs["ray data, 2 actors"] = lambda out: run_ray_data(bundle, files, 2)
    best: dict[str, dict] = {}
    loads = []
    print(f"{len(files)} files, {total:.0f} s of audio; {args.rounds} rounds", flush=True)
    for round_ in range(args.rounds):
        before = os.getloadavg()[0]
        for name, run in runs.items():
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            result = run(out)
            print(f"round {round_ + 1}: {name:<20} {result['wall']:6.1f} s", flush=True)
            if name not in best or result["wall"] < best[name]["wall"]:
                best[name] = result
        loads.append((before, os.getloadavg()[0]))
    print("\n| run | best wall s | Ray start-up s | first file back s | audio s/s end to end | audio s/s steady "
          "| steady s per file (vs plain) |")
    print("|---|---|---|---|---|---|---|")
    per_file = {name: r["steady"] / (r["recorded"] - 1) for name, r in best.items() if r.get("recorded", 0) > 1}
    for name, r in best.items():
        steady = f"{r['steady_audio'] / r['steady']:.0f}" if name in per_file else "-"
        versus = (f"{per_file[name] * 1000:.0f} ms ({per_file[name] - per_file['plain']:+.3f} s)"
                  if name in per_file else "-")
        print(f"| {name} | {r['wall']:.1f} | {r['startup']:.1f} | {r.get('first', float('nan')):.1f} | "
              f"{total / r['wall']:.0f} | {steady} | {versus} |")
    print("\nload average (1 min) before/after each round: "
          + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in loads))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
