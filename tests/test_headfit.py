"""Linear heads fitted to convergence: scikit-learn's solution, grouped inner CV, calibration."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from echoengine.headfit import DEFAULT_C, choose_c, fit_logistic, fit_temperature, select_and_fit


@pytest.fixture
def blobs():
    """Ten overlapping classes in 40 dimensions, three recordings of four clips each per class."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(10), 12)
    centres = rng.normal(0, 1, (10, 40))
    x = centres[y] + rng.normal(0, 3.0, (len(y), 40))
    groups = np.repeat(np.arange(30), 4)
    return StandardScaler().fit_transform(x), y, groups


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_the_head_converges_to_scikit_learns_logistic_regression(blobs, c):
    x, y, _ = blobs
    weight, bias = fit_logistic(x, y, n_classes=10, c=c)
    reference = LogisticRegression(C=c, max_iter=10_000, tol=1e-10).fit(x, y)
    ours = torch.softmax(torch.as_tensor(x @ weight.T + bias), 1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=1e-4)
    np.testing.assert_allclose(weight, reference.coef_, atol=1e-3)


def test_sample_weights_are_scikit_learns_class_weights(blobs):
    x, y, _ = blobs
    keep = (y != 3) | (np.arange(len(y)) % 4 == 0)  # class 3 rare: 3 clips of 12
    x, y = x[keep], y[keep]
    reference = LogisticRegression(C=0.3, class_weight="balanced", max_iter=10_000, tol=1e-10).fit(x, y)
    counts = np.bincount(y)
    weight, bias = fit_logistic(x, y, n_classes=10, c=0.3, sample_weight=(len(y) / (10 * counts))[y])
    ours = torch.softmax(torch.as_tensor(x @ weight.T + bias), 1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=1e-4)


def test_the_inner_cv_holds_out_whole_recordings_and_picks_a_middle_strength(blobs):
    x, y, groups = blobs
    seen = []

    def spy(train_x, train_y, **options):
        seen.append(len(train_x))
        return fit_logistic(train_x, train_y, **options)

    c, scores, held_out, folds = choose_c(x, y, groups, n_classes=10, fit=spy, folds=5)
    assert folds == 3  # three recordings per class: three inner folds, each holding out one per class
    assert set(seen) == {80} and held_out.shape == (120, 10)
    assert min(scores.values()) == scores[c] and 0.001 < c < 10  # neither end of the grid


def test_two_recordings_per_class_still_train_and_one_falls_back_to_the_default(blobs, caplog):
    x, y, groups = blobs
    two = groups % 3 != 2
    fit = select_and_fit(x[two], y[two], groups[two], n_classes=10)
    assert fit.inner_folds == 2
    one = groups % 3 == 0
    with caplog.at_level(logging.WARNING):
        fit = select_and_fit(x[one], y[one], groups[one], n_classes=10)
    assert fit.c == DEFAULT_C and fit.inner_folds == 0 and fit.temperature == 1.0
    assert "too few recordings per class for an inner cross-validation" in caplog.text


def test_temperature_scaling_makes_the_inner_folds_better_calibrated(blobs):
    x, y, groups = blobs
    fit = select_and_fit(x, y, groups, n_classes=10, grid=(100.0,))  # weak penalty: overconfident
    assert fit.temperature > 1 and fit.ece_after < fit.ece_before
    logits = np.array([[3.0, 0.0], [0.0, 3.0]] * 5)
    assert fit_temperature(logits, np.array([0, 1] * 5)) < 1  # always right: sharpened


@pytest.fixture(scope="module")
def few_recordings(esc50, tmp_path_factory):
    """Six ESC-50 classes with three source recordings each (one clip of each), as a folder per class of links."""
    meta = pd.read_csv(esc50 / "meta" / "esc50.csv")
    root = tmp_path_factory.mktemp("few")
    for label in sorted(meta["category"].unique())[:6]:
        clips = meta[meta["category"] == label].drop_duplicates("src_file").head(3)
        (root / label).mkdir()
        for name in clips["filename"]:
            (root / label / name).symlink_to(esc50 / "audio" / name)
    return root


def test_cv_with_birdnet_alone_runs_on_two_recordings_per_class(few_recordings, tmp_path, capsys):
    from echoengine.cli import main

    two = tmp_path / "two"
    for folder in few_recordings.iterdir():  # the first two recordings of each class
        (two / folder.name).mkdir(parents=True)
        for link in sorted(folder.iterdir())[:2]:
            (two / folder.name / link.name).symlink_to(link.resolve())
    out = tmp_path / "cv"
    assert main(["cv", str(two), "--folds", "2", "--embedder", "birdnet", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "linear head fitted by L-BFGS" in printed and "validation 0" in printed
    assert (out / "fold0" / "weights.pt").is_file() and (out / "fold1" / "weights.pt").is_file()
    accuracy = json.loads((out / "metrics.json").read_text())["mean"]["accuracy"]
    assert accuracy > 1 / 6  # better than chance on real recordings never seen in training


def test_train_with_birdnet_alone_fits_a_calibrated_linear_head(few_recordings, tmp_path, capsys):
    from echoengine.bundle import load_bundle
    from echoengine.cli import main

    out = tmp_path / "bundle"
    assert main(["train", str(few_recordings), "--embedder", "birdnet", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    assert "+ linear head" in printed and "C = " in printed and "chosen by 2-fold cross-validation" in printed
    bundle = load_bundle(out)
    assert bundle.config.model.head_name == "linear" and bundle.config.convex_head()
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 1 and history["train_accuracy"].iloc[0] > 0.9
