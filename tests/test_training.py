import math

import numpy as np
import pandas as pd
import pytest
import torch

from echoengine import catalog
from echoengine import splits as grouped_splits
from echoengine.bundle import load_bundle
from echoengine.config import EchoConfig
from echoengine.errors import ConfigError, EchoError
from echoengine.layout import read_classes
from echoengine.prediction import predict_table
from echoengine.training import balanced_class_weights, fit

# A small front end keeps these tests quick on a CPU.
QUICK = dict(
    model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
    train={"epochs": 12, "learning_rate": 2e-3, "device": "cpu", "patience": 12},
    augment={"variants": 4, "noise_p": 0, "time_stretch_p": 0, "pitch_shift_p": 0, "shift_p": 0, "rotation_p": 0},
    frontend={"n_mels": 64, "image_height": 96, "image_width": 64},
    data={"batch_size": 4, "group_regex": r"^(.+_rec\d+)_"},
)


def quick_config(**changes) -> EchoConfig:
    sections = {name: {**values, **changes.get(name, {})} for name, values in QUICK.items()}
    return EchoConfig().replace(**sections)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from echoengine.synthetic import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("calls"), classes=4, files_per_class=12, seed=1)
    config = quick_config()
    table, _ = catalog.scan(catalog.load_catalog(root, config.data), config.audio)
    parts = grouped_splits.split(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    return {part: table[parts == part].reset_index(drop=True) for part in ("train", "val", "test")}


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    classes = catalog.class_names(splits["train"])
    config = quick_config(data={"cache_dir": str(tmp_path_factory.mktemp("cache"))})
    return fit(splits["train"], splits["val"], classes, config, tmp_path_factory.mktemp("run") / "bundle",
               progress=False, log=lambda line: None)


def test_a_small_cnn_learns_the_synthetic_calls_and_generalises_to_held_out_recordings(trained, splits):
    bundle = load_bundle(trained.bundle)
    probabilities = predict_table([bundle], splits["test"])
    labels = splits["test"]["label"].map({c: i for i, c in enumerate(bundle.classes)}).to_numpy()
    accuracy = (probabilities.argmax(1) == labels).mean()
    assert accuracy >= 0.8, f"held-out accuracy {accuracy:.2f} (chance 0.25)"
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]


def test_the_bundle_round_trip_gives_the_same_predictions(trained, splits):
    bundle = load_bundle(trained.bundle)
    assert read_classes(trained.bundle) == bundle.classes == catalog.class_names(splits["train"])
    assert bundle.config == EchoConfig.load(trained.bundle / "echoengine.toml")
    images = torch.rand(3, 3, 96, 64)
    with torch.no_grad():
        assert torch.allclose(bundle.model(images), trained.model(images), atol=1e-6)
    history = pd.read_csv(trained.bundle / "history.csv")
    assert history["epoch"].tolist() == list(range(1, len(trained.history) + 1))
    best = history.loc[history["val_loss"].idxmin(), "epoch"]
    assert best == trained.best_epoch
    assert any((trained.bundle / "tensorboard").iterdir())


def test_an_interrupted_run_resumes_to_the_same_epoch_count_without_losing_history(splits, tmp_path):
    classes = catalog.class_names(splits["train"])
    config = quick_config(train={"epochs": 4})
    bundle = tmp_path / "bundle"

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch 2:"):
            raise KeyboardInterrupt  # like a kill between epochs

    with pytest.raises(KeyboardInterrupt):
        fit(splits["train"], splits["val"], classes, config, bundle, progress=False, log=stop_after_two)
    first_two = pd.read_csv(bundle / "history.csv")
    assert first_two["epoch"].tolist() == [1, 2]
    result = fit(splits["train"], splits["val"], classes, config, bundle, resume=True, progress=False,
                 log=lambda line: None)
    history = pd.read_csv(bundle / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(history.iloc[:2], first_two)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]


def test_resuming_with_another_config_or_without_a_checkpoint_is_refused(splits, tmp_path):
    classes = catalog.class_names(splits["train"])
    with pytest.raises(EchoError, match="no validation files"):
        fit(splits["train"], splits["val"].iloc[:0], classes, quick_config(), tmp_path / "no-val")
    with pytest.raises(EchoError, match="nothing to resume"):
        fit(splits["train"], splits["val"], classes, quick_config(), tmp_path / "empty", resume=True)
    config = quick_config(train={"epochs": 1})
    fit(splits["train"], splits["val"], classes, config, tmp_path / "b", progress=False, log=lambda line: None)
    with pytest.raises(EchoError, match="different config"):
        fit(splits["train"], splits["val"], classes, config.replace(train={"learning_rate": 0.1}), tmp_path / "b",
            resume=True)


def test_a_frozen_backbone_keeps_its_weights_and_the_head_learns(splits, tmp_path):
    classes = catalog.class_names(splits["train"])
    config = quick_config(train={"epochs": 2, "freeze_backbone": True})
    torch.manual_seed(config.train.seed)
    result = fit(splits["train"], splits["val"], classes, config, tmp_path / "b", progress=False,
                 log=lambda line: None)
    from echoengine.models import build_model

    torch.manual_seed(config.train.seed)
    initial = build_model(config.model, len(classes)).state_dict()
    trained = result.model.state_dict()
    backbone = [k for k in trained if k.startswith("backbone.")]
    head = [k for k in trained if k.startswith("head.") and trained[k].is_floating_point()]
    assert all(torch.equal(trained[k], initial[k]) for k in backbone)  # batch-norm statistics included
    assert not all(torch.equal(trained[k], initial[k]) for k in head)


def test_options_of_the_seed_pipelines_train(splits, tmp_path):
    classes = catalog.class_names(splits["train"])
    config = quick_config(
        train={"epochs": 3, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "cosine", "warmup_epochs": 1,
               "class_weights": "balanced", "label_smoothing": 0.1, "freeze_backbone": True, "unfreeze_epoch": 2},
        augment={"mixup_p": 1.0},
    )
    result = fit(splits["train"], splits["val"], classes, config, tmp_path / "b", progress=False,
                 log=lambda line: None)
    rates = [row["learning_rate"] for row in result.history]
    assert rates[0] == pytest.approx(1e-3)  # warm-up from half the rate
    assert rates[1] == pytest.approx(2e-3)  # cosine starts at the full rate
    assert rates[2] < rates[1]
    assert all(math.isfinite(row["train_loss"]) for row in result.history)


def test_balanced_class_weights_follow_scikit_learn():
    weights = balanced_class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    assert weights.tolist() == pytest.approx([6 / 9, 2.0, 1.0, 1.0])


def test_training_options_are_checked():
    with pytest.raises(ConfigError, match=r"train\.optimizer"):
        EchoConfig().replace(train={"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        EchoConfig().replace(train={"epochs": 3, "warmup_epochs": 3})
    with pytest.raises(ConfigError, match="class_weights"):
        EchoConfig().replace(train={"class_weights": "inverse"})


def test_refit_trains_again_on_both_parts_for_the_chosen_epochs(splits, tmp_path):
    from echoengine.training import fit_and_refit

    classes = catalog.class_names(splits["train"])
    config = quick_config(train={"epochs": 4, "refit": True})
    lines = []
    result = fit_and_refit(splits["train"], splits["val"], classes, config, tmp_path / "b", progress=False,
                           log=lines.append)
    selection = pd.read_csv(tmp_path / "b" / "selection_history.csv")
    assert selection.loc[selection["val_loss"].idxmin(), "epoch"] == result.best_epoch
    refit = pd.read_csv(tmp_path / "b" / "history.csv")
    assert refit["epoch"].tolist() == list(range(1, result.best_epoch + 1))
    assert EchoConfig.load(tmp_path / "b" / "echoengine.toml").train.epochs == result.best_epoch
    assert any(line.startswith("refit: training again on") for line in lines)
    state = torch.load(tmp_path / "b" / "weights.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in result.model.state_dict().items())  # the last epoch's


def test_a_run_killed_during_its_refit_resumes_the_refit(splits, tmp_path):
    from echoengine.training import fit_and_refit

    classes = catalog.class_names(splits["train"])
    config = quick_config(train={"epochs": 4, "refit": True, "patience": 4})
    seen = []

    def stop_in_the_refit(line: str) -> None:
        seen.append(line)
        if line.startswith("epoch 1:") and any(s.startswith("refit:") for s in seen):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_and_refit(splits["train"], splits["val"], classes, config, tmp_path / "b", progress=False,
                      log=stop_in_the_refit)
    selection = pd.read_csv(tmp_path / "b" / "selection_history.csv")
    chosen = int(selection.loc[selection["val_loss"].idxmin(), "epoch"])
    # resumed with the command line's config (as cv and train do): the refit keeps its own
    result = fit_and_refit(splits["train"], splits["val"], classes, config, tmp_path / "b", resume=True,
                           progress=False, log=lambda line: None)
    assert pd.read_csv(tmp_path / "b" / "history.csv")["epoch"].tolist() == list(range(1, chosen + 1))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "selection_history.csv"), selection)
    assert result.best_epoch == chosen


def test_a_cosine_run_cannot_be_stretched_on_resume(splits, tmp_path):
    classes = catalog.class_names(splits["train"])
    config = quick_config(train={"epochs": 2, "schedule": "cosine"})
    fit(splits["train"], splits["val"], classes, config, tmp_path / "b", progress=False, log=lambda line: None)
    with pytest.raises(EchoError, match="cosine schedule was laid out for 2 epochs"):
        fit(splits["train"], splits["val"], classes, config.replace(train={"epochs": 5}), tmp_path / "b",
            resume=True)


def test_options_that_would_do_nothing_are_refused():
    with pytest.raises(ConfigError, match="needs freeze_backbone"):
        EchoConfig().replace(train={"unfreeze_epoch": 3})
    with pytest.raises(ConfigError, match="pretrained already"):
        EchoConfig().replace(model={"embedder": "birdnet", "head": "linear", "pretrained": True})


def test_the_same_seed_gives_the_same_model_whatever_the_cache_and_across_a_resume(tiny_training, tmp_path,
                                                                                   one_torch_thread):
    from echoengine.cli import main

    data, quick = tiny_training

    def train(out: str, epochs: int, *options: str) -> None:
        assert main(["train", str(data), "--config", str(quick), "--out", str(tmp_path / out), "--epochs",
                     str(epochs), "--quiet", *options]) == 0

    def outcome(out: str) -> tuple[pd.DataFrame, dict, dict]:
        history = pd.read_csv(tmp_path / out / "history.csv").drop(columns=["seconds", "images_per_second"])
        best = torch.load(tmp_path / out / "weights.pt", weights_only=True)
        last = torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)["model"]
        return history, best, last

    train("cold", 3, "--cache-dir", str(tmp_path / "shared-cache"))
    train("warm", 3, "--cache-dir", str(tmp_path / "shared-cache"))  # every image a hit
    train("uncached", 3, "--no-cache")
    train("resumed", 2, "--cache-dir", str(tmp_path / "cold-1"))
    train("resumed", 3, "--resume", "--cache-dir", str(tmp_path / "cold-2"))  # a cold cache again
    history, best, last = outcome("cold")
    assert history["epoch"].tolist() == [1, 2, 3]
    for out in ("warm", "uncached", "resumed"):
        other_history, other_best, other_last = outcome(out)
        pd.testing.assert_frame_equal(other_history, history, check_exact=True, obj=out)
        for mine, theirs in ((best, other_best), (last, other_last)):
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine), out


def test_a_run_still_improving_at_its_epoch_limit_says_so(tiny_training, tmp_path, capsys):
    from echoengine.cli import main

    data, config = tiny_training
    assert main(["train", str(data), "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "b"),
                 "--no-cache", "--quiet"]) == 0
    assert "still falling at the last epoch (1)" in capsys.readouterr().out
