import csv

import pandas as pd
import torch

from echoengine import catalog
from echoengine.config import EchoConfig
from echoengine.train import fit


def test_small_cnn_learns_the_synthetic_calls_and_writes_a_bundle(synthetic_dataset, tmp_path):
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"epochs": 15, "learning_rate": 3e-3, "device": "cpu", "patience": 15},
        augment={"noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0, "shift_p": 0, "rotation_p": 0},
        frontend={"n_mels": 64, "image_height": 96, "image_width": 64},
        data={"batch_size": 8},
    )
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    classes = catalog.class_names(table)
    result = fit(table, table, classes, config, tmp_path / "bundle")
    bundle = result.bundle
    assert (bundle / "classes.txt").read_text(encoding="utf-8").split() == classes
    assert EchoConfig.load(bundle / "echoengine.toml") == config
    with open(bundle / "history.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(result.history) >= 1
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    best = min(result.history, key=lambda row: row["val_loss"])
    assert best["epoch"] == result.best_epoch and best["val_accuracy"] > 1.5 / len(classes)  # chance is 1/4
    state = torch.load(bundle / "weights.pt", weights_only=True)
    assert set(state) and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert list(pd.read_csv(bundle / "history.csv").columns)[:2] == ["epoch", "train_loss"]
