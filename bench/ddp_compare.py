"""small_cnn trained by one process (two seeds) and by two DDP processes (gloo): the histories side by side.

The data are 24 synthetic clips of 4 classes (``echoengine.synthetic.make_dataset``'s
default: 16 train, 4 validation, 4 test files), the config the default one
(48 kHz, 5 s clips, 260 x 260 images, batch 16, Adam at 1e-4, the Echo head
with batch norm and dropout 0.5) with ``small_cnn`` (batch norm), 4 epochs:
``echoengine train DATA --backbone small_cnn --epochs 4 [--distributed 2]``.
Each run is a fresh process (two for the DDP run), one thread each.

Run::

    python bench/ddp_compare.py [--epochs 4] [--seeds 0 1] [--out DIR]

``PYTHONPATH`` chooses the echoengine the runs use (an older checkout's
``src`` gives that version's figures).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from echoengine.config import EchoConfig
from echoengine.synthetic import make_dataset


def _config(epochs: int, seed: int) -> EchoConfig:
    return EchoConfig().replace(model={"backbone": "small_cnn"},
                                train={"device": "cpu", "epochs": epochs, "seed": seed})


def _train(root: Path, data: Path, name: str, config: EchoConfig, *extra: str) -> tuple[pd.DataFrame, float]:
    """One ``echoengine train`` run: its history and wall seconds."""
    config_file = config.save(root / f"{name}.toml")
    command = [sys.executable, "-m", "echoengine", "train", str(data), "--config", str(config_file),
               "--out", str(root / name), "--cache-dir", str(root / "cache"), "--quiet", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return pd.read_csv(root / name / "history.csv"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="ddp-compare-"))
    data = make_dataset(root / "data")
    runs = [(f"1 process, seed {seed}", f"single-{seed}", _config(args.epochs, seed), ()) for seed in args.seeds]
    runs.append((f"2 processes, seed {args.seeds[0]}", "ddp", _config(args.epochs, args.seeds[0]),
                 ("--distributed", "2")))
    rows = []
    for title, name, config, extra in runs:
        history, seconds = _train(root, data, name, config, *extra)
        last = history.iloc[-1]
        rows.append({"run": title, "val_loss by epoch": " ".join(f"{v:.4f}" for v in history["val_loss"]),
                     "last train_loss": round(float(last["train_loss"]), 4),
                     "last val_accuracy": round(float(last["val_accuracy"]), 3), "wall s": round(seconds, 1)})
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
