"""The command line from data to bundle to predictions: train, evaluate, cv, predict, demo."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from echoengine.cli import main
from echoengine.config import EchoConfig
from echoengine.synthetic import make_dataset

GROUPS = r"^(.+_rec\d+)_"


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("calls"), classes=4, files_per_class=12, seed=1)


@pytest.fixture(scope="module")
def quick_toml(tmp_path_factory):
    """A small front end and a CPU-sized model, so that the commands run in seconds."""
    config = EchoConfig().replace(
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"learning_rate": 2e-3, "device": "cpu"},
        augment={"variants": 4, "time_stretch_p": 0, "pitch_shift_p": 0, "rotation_p": 0},
        frontend={"n_mels": 64, "image_height": 96, "image_width": 64},
        data={"batch_size": 4, "group_regex": GROUPS, "val_fraction": 0.2, "test_fraction": 0.2},
    )
    return config.save(tmp_path_factory.mktemp("config") / "quick.toml")


@pytest.fixture(scope="module")
def bundle(calls, quick_toml, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "bundle"
    cache = tmp_path_factory.mktemp("cache")
    assert main(["train", str(calls), "--config", str(quick_toml), "--out", str(out), "--epochs", "10",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    return out


def test_train_writes_a_complete_bundle_with_an_honest_report(bundle):
    names = {p.name for p in bundle.iterdir()}
    assert {"echoengine.toml", "classes.txt", "weights.pt", "checkpoint.pt", "history.csv", "splits.csv",
            "metrics.json", "per_class.csv", "plots", "tensorboard"} <= names
    assert {p.name for p in (bundle / "plots").iterdir()} == {"confusion.png", "training.png"}
    metrics = json.loads((bundle / "metrics.json").read_text())
    splits = pd.read_csv(bundle / "splits.csv")
    assert metrics["n"] == (splits["part"] == "test").sum() and metrics["evaluated_on"].startswith("test part")
    assert metrics["accuracy"] >= 0.75  # chance: 0.25
    groups = splits.groupby("part")["group"].apply(set)
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])


def test_evaluate_warns_about_files_seen_in_training(bundle, calls, tmp_path, capsys):
    assert main(["evaluate", str(bundle), str(calls), "--out", str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    assert "were used to train or select the model" in captured.err
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n"] == 48 and metrics["files_seen_in_training"] > 0
    assert (tmp_path / "report" / "plots" / "confusion.png").is_file()
    assert "macro_f1" in captured.out
    assert main(["evaluate", str(bundle), str(calls), "--out", str(tmp_path / "report")]) == 2  # not again silently
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", str(bundle), str(calls), "--out", str(tmp_path / "report"), "--overwrite"]) == 0


def test_predict_reports_a_bad_file_in_one_line_and_predicts_the_rest(bundle, calls, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    files = sorted(calls.glob("*/*_rec00_a.*"))
    assert main(["predict", str(bundle), str(bad), *map(str, files), "--format", "json", "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "broken.wav" in errors[0] and errors[0].startswith("error:")
    results = json.loads(captured.out)
    assert [r["file"] for r in results] == [str(f) for f in files]
    for result in results:
        assert len(result["top_k"]) == 2 and result["top_k"][0]["species"] == result["species"]
        assert 0 <= result["top_k"][1]["probability"] <= result["probability"] <= 100
    correct = sum(r["species"] == os.path.basename(os.path.dirname(r["file"])) for r in results)
    assert correct >= 3
    assert main(["predict", str(bundle), str(files[0])]) == 0  # the table: name, species (percent)
    line = capsys.readouterr().out.strip()
    assert line.startswith(files[0].name) and "%)" in line


def test_cv_keeps_fold_models_that_never_share_a_recording_and_serve_as_an_ensemble(calls, quick_toml, tmp_path,
                                                                                      capsys):
    out = tmp_path / "cv"
    assert main(["cv", str(calls), "--config", str(quick_toml), "--folds", "3", "--epochs", "2", "--out", str(out),
                 "--no-cache", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "macro_f1" in text
    folds = pd.read_csv(out / "folds.csv")
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    for k in range(3):
        parts = pd.read_csv(out / f"fold{k}" / "splits.csv").groupby("part")["group"].apply(set)
        assert not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"])
        assert parts["test"] == set(folds.loc[folds["fold"] == k, "group"])
    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["folds"]) == 3 and set(summary["mean"]) == set(summary["std"])
    assert summary["pooled_out_of_fold"]["n"] == 48
    assert (out / "plots" / "cv_val_accuracy.png").stat().st_size > 10_000
    file = next(calls.glob("*/*.wav"))
    assert main(["predict", str(out), str(file)]) == 0
    assert "ensemble of 3 fold models" in capsys.readouterr().err
    # resuming keeps finished folds only under the run's own settings and folds
    command = ["cv", str(calls), "--config", str(quick_toml), "--epochs", "2", "--out", str(out), "--no-cache",
               "--quiet", "--resume"]
    assert main([*command, "--folds", "3"]) == 0
    assert "finished before, kept" in capsys.readouterr().out
    assert main([*command, "--folds", "3", "--lr", "0.5"]) == 2
    assert "trained with other settings" in capsys.readouterr().err
    assert main([*command, "--folds", "4"]) == 2
    assert "differ from the run's" in capsys.readouterr().err


def test_a_run_killed_with_sigkill_resumes_without_losing_or_repeating_epochs(calls, quick_toml, tmp_path):
    out = tmp_path / "bundle"
    command = [sys.executable, "-m", "echoengine", "train", str(calls), "--config", str(quick_toml), "--out",
               str(out), "--epochs", "6", "--patience", "6", "--no-cache", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (out / "checkpoint.pt").is_file():
            try:
                if torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] >= 2:
                    break
            except (EOFError, RuntimeError):  # never half-written: the rename is atomic
                pytest.fail("checkpoint.pt was read half-written")
        time.sleep(0.2)
    assert process.poll() is None, "training finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(pd.read_csv(out / "history.csv"))
    assert 2 <= killed_at < 6
    finished = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming {out} after epoch" in finished.stdout
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "metrics.json").read_text())["n"] > 0


def test_demo_runs_end_to_end_on_synthetic_data(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "2", "--files-per-class", "6", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "5/5 done" in out and "true calls were detected" in out
    assert (tmp_path / "demo" / "bundle" / "metrics.json").is_file()
    assert (tmp_path / "demo" / "bundle" / "plots" / "confusion.png").is_file()
    assert (tmp_path / "demo" / "detections" / "events.csv").is_file()
    assert (tmp_path / "demo" / "field" / "synthetic_field_0000.selections.txt").is_file()
    # run again: the earlier demo is replaced whole; a folder holding someone else's file is left alone
    (tmp_path / "demo" / "bundle" / "model.onnx").write_bytes(b"a graph of the earlier weights")
    command = ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--files-per-class", "6", "--quiet"]
    assert main(command) == 0
    assert "replaced the earlier demo" in capsys.readouterr().out
    assert not (tmp_path / "demo" / "bundle" / "model.onnx").exists()
    (tmp_path / "demo" / "notes.txt").write_text("mine")
    assert main(command) == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "demo" / "notes.txt").read_text() == "mine"


def test_inner_validation_never_shares_a_recording_with_the_test_fold(esc50):
    from echoengine import catalog, splits
    from echoengine.crossval import inner_split

    table = catalog.load_catalog(esc50)
    folds = splits.kfold(table, folds=5, seed=0, sparse_classes="drop")
    for k in range(5):
        rest = table[(folds != k) & (folds >= 0)].reset_index(drop=True)
        trains = inner_split(rest, val_fraction=0.15, seed=k)
        test_groups = set(table.loc[folds == k, "group"])
        train_groups, val_groups = set(rest.loc[trains, "group"]), set(rest.loc[~trains, "group"])
        assert not (train_groups & val_groups) and not (test_groups & (train_groups | val_groups))
        assert 0.1 < (~trains).mean() < 0.25
        assert set(rest.loc[trains, "label"]) == set(rest["label"])  # every class trains


@pytest.mark.parametrize("epochs", [pytest.param(2, id="quick"), pytest.param(25, id="long", marks=pytest.mark.slow)])
def test_training_on_real_esc10_clips(esc10, quick_toml, tmp_path, epochs):
    from echoengine import catalog, splits
    from echoengine.bundle import load_bundle
    from echoengine.evaluation import evaluate
    from echoengine.training import fit

    config = EchoConfig.load(quick_toml).replace(data={"group_regex": "", "cache_dir": str(tmp_path / "cache")},
                                                 train={"epochs": epochs, "patience": epochs, "learning_rate": 1e-3})
    table, errors = catalog.scan(esc10, config.audio)
    assert len(table) == 83 and not errors
    parts = splits.split(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    classes = catalog.class_names(table)
    result = fit(table[parts == "train"], table[parts == "val"], classes, config, tmp_path / "bundle",
                 progress=False, log=lambda line: None)
    metrics, probabilities = evaluate([load_bundle(result.bundle)], table[parts == "test"])
    assert metrics["n"] == (parts == "test").sum() and len(classes) == 10
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    if epochs > 2:  # chance is 0.1
        assert metrics["accuracy"] >= 0.3, metrics["accuracy"]
