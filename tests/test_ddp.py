"""Training across processes (DDP, gloo on the CPU): the metrics of one process, rank 0 alone writing, --resume."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from echoengine.config import EchoConfig
from echoengine.synthetic import make_dataset


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """36 synthetic clips of 3 classes, a small_cnn bundle trained on them, and a config for a head on its embeddings.

    The head (linear, trained by epochs with ``--solver sgd``) on the CNN's
    embeddings has no batch norm, whose statistics would be those of each
    process's half-batch on the CPU, so two processes must give one
    process's numbers to float rounding.
    """
    root = tmp_path_factory.mktemp("ddp")
    data = make_dataset(root / "data", classes=3, files_per_class=12, seed=0)
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"learning_rate": 3e-3, "device": "cpu", "epochs": 3},
        augment={"variants": 2, "noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0},
        audio={"sample_rate": 32000, "clip_seconds": 2.0},
        frontend={"n_fft": 512, "hop_length": 512, "n_mels": 48, "image_height": 48, "image_width": 48},
        data={"batch_size": 8},  # 24 training clips: three whole batches, halved exactly between two processes
    )
    config_file = config.save(root / "quick.toml")
    _train(root, data, config_file, "cnn")
    head = config.replace(model={"embedder": f"cnn:{root / 'cnn'}", "head": "linear"},
                          train={"solver": "sgd", "learning_rate": 0.01, "epochs": 4})
    return root, data, head.save(root / "head.toml")


def _train(root, data, config, out, *args):
    command = [sys.executable, "-m", "echoengine", "train", data, "--config", config, "--out", root / out,
               "--cache-dir", root / "cache", "--quiet", *args]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_two_processes_train_as_one_and_resume(head_run):
    root, data, config = head_run
    _train(root, data, config, "single")
    first = _train(root, data, config, "ddp", "--distributed", "2", "--epochs", "2")
    resumed = _train(root, data, config, "ddp", "--distributed", "2", "--epochs", "4", "--resume")
    assert "resuming" in resumed.stdout and "after epoch 2" in resumed.stdout
    assert first.stdout.count("wrote the bundle") == 1  # rank 0 alone reports
    single = pd.read_csv(root / "single" / "history.csv")
    both = pd.read_csv(root / "ddp" / "history.csv")
    assert both["epoch"].tolist() == [1, 2, 3, 4]
    assert single["val_accuracy"].max() > 0.5 and single["train_accuracy"].iloc[-1] > 0.9  # it learns (3 classes)
    for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        assert both[column].to_numpy() == pytest.approx(single[column].to_numpy(), abs=1e-5), column
    events = list((root / "ddp" / "tensorboard").glob("events.*"))
    assert len(events) == 2  # one per launch: rank 0's; rank 1 wrote nothing
    assert not list((root / "ddp").rglob("*.tmp"))
    metrics = [pd.read_json(root / name / "metrics.json", typ="series") for name in ("single", "ddp")]
    assert metrics[1]["accuracy"] == pytest.approx(metrics[0]["accuracy"])


def test_distributed_refuses_a_batch_the_processes_cannot_share(head_run, tmp_path):
    _, data, config = head_run
    command = [sys.executable, "-m", "echoengine", "train", data, "--config", config, "--out", tmp_path / "b",
               "--no-cache", "--quiet", "--distributed", "3", "--epochs", "1"]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("error: data.batch_size 8 must be a multiple of the 3 training "
                                                    "processes (each takes an equal part of every batch)")
