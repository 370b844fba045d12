"""Front-end benchmark: echoengine's mel front end and loader against librosa's.

Usage::

    python bench/frontend.py --data ../shared/data/esc50-subset [--clips 64] [--json OUT]

Prints a table with, side by side in one run:

* clips per second of ``librosa.feature.melspectrogram`` + ``librosa.power_to_db``
  (one clip per call, the faster of numpy's default BLAS threads and one BLAS
  thread) and of :meth:`echoengine.features.MelFrontend.mel_db` (the same
  output) with the Echo settings, their ratio, and the max abs difference in
  dB over all clips;
* the full model image (resize, scaling) per clip, for reference;
* decode + resample time per file of ``librosa.load(sr=48000)`` and of
  :func:`echoengine.audio.load`, and their ratio;
* the mean difference between the antialiased Lanczos-5 image (our default)
  and the Echo pipeline's non-antialiased one.

Each round times both sides on the same clips one after the other, so that
both see the same machine load; each timed pass follows a short pause and an
untimed warm-up call of its own side. The table reports the best round of
each side (as ``timeit`` advises: slower rounds measure interference, which
on a shared 2-core VM swings single rounds by up to 2x) and, for reference,
the ratios of the medians. The JSON has ``frontend_speedup``,
``max_abs_db_error`` and ``load_speedup`` (best rounds), plus the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from echoengine import audio, runtime
from echoengine.config import EchoConfig
from echoengine.features import MelFrontend, reference_mel_db


def _audio_files(data: Path) -> list[Path]:
    root = data / "audio" if (data / "audio").is_dir() else data
    files = sorted(p for p in root.rglob("*") if audio.is_audio_file(p))
    if not files:
        sys.exit(f"no audio files under {root}")
    return files


def _seconds(fn, warm_up=None) -> float:
    # Let the other side's idle worker threads (OpenBLAS, OpenMP) stop spinning
    # first: they busy-wait for a while after a call and would steal a core.
    time.sleep(0.2)
    if warm_up is not None:  # an untimed call, so that neither side pays for the switch
        warm_up()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_frontend(clips: np.ndarray, config: EchoConfig, *, batch: int, rounds: int) -> dict:
    frontend = MelFrontend.from_config(config)
    waveforms = torch.from_numpy(clips)
    batches = [waveforms[i : i + batch] for i in range(0, len(waveforms), batch)]
    with torch.inference_mode():
        ours = torch.cat([frontend.mel_db(b) for b in batches]).numpy()
        reference = np.stack([reference_mel_db(y, config) for y in clips])
        error = float(np.abs(ours - reference).max())
        # librosa as it runs by default (numpy's BLAS on every core), on its own.
        lib_warm_up = lambda: [reference_mel_db(y, config) for y in clips[:4]]  # noqa: E731
        ours_warm_up = lambda: [frontend(b) for b in batches[:4]]  # noqa: E731
        lib_default = [_seconds(lambda: [reference_mel_db(y, config) for y in clips], lib_warm_up)
                       for _ in range(rounds)]
        # Then both sides in turns, with numpy's BLAS pool at one thread: librosa is
        # as fast so (its FFT is single-threaded, its mel product small), and idle
        # BLAS threads would otherwise spin on the cores torch is using.
        lib_t, ours_t, image_t = [], [], []
        with threadpool_limits(limits=1, user_api="blas"):
            for _ in range(rounds):
                lib_t.append(_seconds(lambda: [reference_mel_db(y, config) for y in clips], lib_warm_up))
                ours_t.append(_seconds(lambda: [frontend.mel_db(b) for b in batches], ours_warm_up))
                image_t.append(_seconds(lambda: [frontend(b) for b in batches], ours_warm_up))
    n = len(clips)
    # Best of the rounds on both sides (as timeit advises: slower rounds are
    # interference), and the faster of librosa's two settings as the reference.
    lib_best = min(min(lib_default), min(lib_t))
    return {
        "librosa_clips_per_s": n / lib_best,
        "librosa_default_blas_clips_per_s": n / min(lib_default),
        "librosa_one_blas_thread_clips_per_s": n / min(lib_t),
        "ours_clips_per_s": n / min(ours_t),
        "ours_image_clips_per_s": n / min(image_t),
        "frontend_speedup": lib_best / min(ours_t),
        "frontend_speedup_of_medians": min(statistics.median(lib_default), statistics.median(lib_t))
        / statistics.median(ours_t),
        "max_abs_db_error": error,
    }


def bench_load(files: list[Path], config: EchoConfig, *, rounds: int) -> dict:
    sr = config.audio.sample_rate
    for f in files[:4]:  # warm up both (imports, first-call set-up)
        librosa.load(f, sr=sr)
        audio.load(f, config.audio)
    lib_t, ours_t = [], []
    for _ in range(rounds):
        lib_t.append(_seconds(lambda: [librosa.load(f, sr=sr) for f in files]))
        ours_t.append(_seconds(lambda: [audio.load(f, config.audio) for f in files]))
    return {
        "librosa_load_ms": 1000 * min(lib_t) / len(files),
        "ours_load_ms": 1000 * min(ours_t) / len(files),
        "load_speedup": min(lib_t) / min(ours_t),
        "load_speedup_of_medians": statistics.median(lib_t) / statistics.median(ours_t),
    }


def resize_difference(clips: np.ndarray, config: EchoConfig) -> float:
    """Mean abs difference of the default image and the Echo pipeline's aliasing resize."""
    echo = config.replace(frontend={"resize_antialias": False})
    with torch.inference_mode():
        ours = MelFrontend.from_config(config)(torch.from_numpy(clips))
        theirs = MelFrontend.from_config(echo)(torch.from_numpy(clips))
    return float((ours - theirs).abs().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/esc50-subset"))
    parser.add_argument("--clips", type=int, default=64, help="clips to time (default 64)")
    parser.add_argument("--batch", type=int, default=1, help="clips per front-end call")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"{args.data} not found: pass --data with the ESC-50 subset (../shared/data/esc50-subset)")
    torch.set_num_threads(args.threads)
    runtime.keep_freed_memory()  # as the echoengine command does; librosa runs under it too
    config = EchoConfig()
    files = _audio_files(args.data)[: args.clips]
    from echoengine.clips import crop_at

    clips = np.stack([crop_at(audio.load(f, config.audio), start=0, length=config.audio.clip_samples) for f in files])
    front = bench_frontend(clips, config, batch=args.batch, rounds=args.rounds)
    load = bench_load(files, config, rounds=max(args.rounds // 2, 2))
    results = {**front, **load, "resize_antialias_mean_abs_diff": resize_difference(clips[:16], config),
               "clips": len(clips), "batch": args.batch, "threads": args.threads}
    rows = [
        ("mel dB, clips/s", f"{front['librosa_clips_per_s']:.1f}", f"{front['ours_clips_per_s']:.1f}",
         f"{front['frontend_speedup']:.2f}x"),
        ("mel dB, ms/clip", f"{1000 / front['librosa_clips_per_s']:.2f}",
         f"{1000 / front['ours_clips_per_s']:.2f}", ""),
        ("  librosa, default BLAS threads", f"{front['librosa_default_blas_clips_per_s']:.1f}", "", "clips/s"),
        ("  librosa, one BLAS thread", f"{front['librosa_one_blas_thread_clips_per_s']:.1f}", "", "clips/s"),
        ("model image, clips/s", "-", f"{front['ours_image_clips_per_s']:.1f}", ""),
        ("max abs error, dB", "(reference)", f"{front['max_abs_db_error']:.4f}", ""),
        ("decode+resample, ms/file", f"{load['librosa_load_ms']:.2f}", f"{load['ours_load_ms']:.2f}",
         f"{load['load_speedup']:.2f}x"),
        ("image, antialias vs Echo resize", "", f"{results['resize_antialias_mean_abs_diff']:.4f}", "mean abs"),
        ("ratios of medians (mel dB, load)", "", "", f"{front['frontend_speedup_of_medians']:.2f}x "
         f"{load['load_speedup_of_medians']:.2f}x"),
    ]
    print(f"{len(clips)} clips of {args.data}, batch {args.batch}, {args.threads} torch threads, "
          f"best of {args.rounds} rounds")
    print(f"{'':34} {'librosa':>12} {'echoengine':>12} {'ratio':>8}")
    for name, lib, ours, ratio in rows:
        print(f"{name:34} {lib:>12} {ours:>12} {ratio:>8}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
