"""Linear heads fitted to convergence: scikit-learn's solution, grouped inner CV, calibration."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from echoengine.headfit import (
    DEFAULT_C,
    PROTOTYPE_SCALE,
    choose_c,
    fit_logistic,
    fit_prototypes,
    fit_temperature,
    select_and_fit,
)


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
    assert fit.prototypes and fit.inner_folds == 0 and fit.temperature == 1.0
    assert "too few recordings per class for an inner cross-validation" in caplog.text
    assert "class means" in caplog.text and "class means" in fit.describe()
    weight, bias = fit_prototypes(x[one], y[one], n_classes=10)
    np.testing.assert_allclose(fit.weight, weight)
    np.testing.assert_array_equal(bias, 0)


def test_the_class_mean_head_is_the_nearest_class_mean_by_cosine_with_logits_of_the_documented_scale(blobs):
    x, y, groups = blobs
    one = groups % 3 == 0
    weight, bias = fit_prototypes(x[one], y[one], n_classes=10)
    means = np.stack([x[one][y[one] == c].mean(0) for c in range(10)])
    cosine = (x @ means.T) / np.linalg.norm(x, axis=1, keepdims=True) / np.linalg.norm(means, axis=1)
    logits = x @ weight.T + bias
    np.testing.assert_array_equal(logits.argmax(1), cosine.argmax(1))  # the norm of x does not change the argmax
    typical = np.linalg.norm(x[one], axis=1).mean()
    np.testing.assert_allclose(logits, cosine * np.linalg.norm(x, axis=1, keepdims=True) / typical * PROTOTYPE_SCALE)
    many = np.concatenate([np.flatnonzero(one & (y == 0))] * 5 + [np.flatnonzero(one & (y != 0))])
    repeated = fit_prototypes(x[many], y[many], n_classes=10)  # five times the clips of class 0: no prior for it
    unit = lambda w: w / np.linalg.norm(w, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(unit(repeated[0]), unit(weight), atol=1e-12)
    np.testing.assert_array_equal(repeated[1], 0)


def test_multi_label_without_an_inner_split_falls_back_to_the_default_strength(blobs, caplog):
    x, y, groups = blobs
    one = groups % 3 == 0
    multi_hot = np.eye(10)[y[one]]
    with caplog.at_level(logging.WARNING):
        fit = select_and_fit(x[one], multi_hot, groups[one], n_classes=10, multilabel=True)
    assert not fit.prototypes and fit.c == DEFAULT_C and fit.inner_folds == 0
    assert f"C = {DEFAULT_C:g}" in caplog.text


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
    assert "class-mean head" in printed and "validation 0" in printed  # one training recording per class
    assert (out / "fold0" / "weights.pt").is_file() and (out / "fold1" / "weights.pt").is_file()
    accuracy = json.loads((out / "metrics.json").read_text())["mean"]["accuracy"]
    assert accuracy > 1 / 6  # better than chance on real recordings never seen in training


def test_the_inner_cv_of_each_fold_sees_its_training_recordings_only(few_recordings, tmp_path, monkeypatch,
                                                                     capsys):
    """The C and temperature of a fold's head are chosen on that fold's training files, never on its test files;
    the baseline beside it (logistic regression on the same embeddings) is fitted on the same training files."""
    import echoengine.baseline as baseline
    import echoengine.headfit as headfit
    import echoengine.training as training
    from echoengine.cli import main

    fitted, selected, baselines = [], [], []
    train_linear_head, select_and_fit = training.train_linear_head, headfit.select_and_fit
    file_embeddings = baseline.file_embeddings

    def recording_train_linear_head(table, *args, **kwargs):
        fitted.append(set(table["path"]))
        return train_linear_head(table, *args, **kwargs)

    def recording_select_and_fit(x, y, groups, **kwargs):
        selected.append((len(x), {str(group) for group in groups}))
        return select_and_fit(x, y, groups, **kwargs)

    def recording_file_embeddings(table, *args, **kwargs):
        baselines.append(set(table["path"]))
        return file_embeddings(table, *args, **kwargs)

    monkeypatch.setattr(training, "train_linear_head", recording_train_linear_head)
    monkeypatch.setattr(headfit, "select_and_fit", recording_select_and_fit)
    monkeypatch.setattr(baseline, "file_embeddings", recording_file_embeddings)
    out = tmp_path / "cv"
    command = ["cv", str(few_recordings), "--folds", "3", "--embedder", "birdnet", "--birdnet-speeds", "1",
               "--birdnet-blocks", "none", "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    assert main([*command, "--baseline", "none"]) == 0 and not baselines
    assert "baseline_accuracy" not in json.loads((out / "metrics.json").read_text())["mean"]
    capsys.readouterr()
    assert main([*command, "--resume"]) == 0  # the finished folds kept, the baseline scored beside each
    printed = capsys.readouterr().out
    assert "baseline_accuracy" in printed and "(baseline_*: StandardScaler + LogisticRegression(C=1)" in printed
    folds = pd.read_csv(out / "folds.csv")
    assert len(fitted) == len(selected) == 3 and len(baselines) == 6 and sorted(folds["fold"].unique()) == [0, 1, 2]
    for k, (paths, (rows, groups)) in enumerate(zip(fitted, selected, strict=True)):
        test = folds[folds["fold"] == k]
        assert paths == set(folds.loc[folds["fold"] != k, "path"]) and not paths & set(test["path"])
        assert rows == len(paths) == 12 and len(groups) == 12  # 2 of the 3 recordings per class
        assert groups == set(folds.loc[folds["fold"] != k, "group"].astype(str)) and not groups & set(
            test["group"].astype(str))
        assert baselines[2 * k] == paths and baselines[2 * k + 1] == set(test["path"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1 / 6 < metrics["mean"]["baseline_accuracy"] <= 1 and "baseline_ece" in metrics["folds"][0]
    _the_baseline_is_scikit_learn_on_each_files_embedding(out, folds, file_embeddings, metrics["folds"][0])


def _the_baseline_is_scikit_learn_on_each_files_embedding(out, folds, file_embeddings, fold0):
    """Fold 0's baseline again, embedding one file at a time: its accuracy is the one cv reported."""
    from sklearn.metrics import accuracy_score

    from echoengine.bundle import load_bundle
    from echoengine.cache import feature_cache

    config = load_bundle(out / "fold0").config
    config = config.replace(data={"cache_dir": str(out.parent / "cache")})
    classes = sorted(folds["label"].unique())

    def embedded(rows):  # one file at a time: no row bookkeeping to get wrong
        x = [file_embeddings(rows.iloc[[i]].reset_index(drop=True), classes, config, cache=feature_cache(config))[0][0]
             for i in range(len(rows))]
        return np.stack(x), rows["label"].tolist()

    (x_train, y_train), (x_test, y_test) = embedded(folds[folds["fold"] != 0]), embedded(folds[folds["fold"] == 0])
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x_train), y_train)
    expected = accuracy_score(y_test, model.predict(scaler.transform(x_test)))
    assert fold0["baseline_accuracy"] == pytest.approx(expected, abs=1e-3)


def test_cv_leaves_the_baseline_out_when_asked_and_for_a_cnn(synthetic_dataset, tmp_path):
    from echoengine.baseline import applies
    from echoengine.cli import main
    from echoengine.config import EchoConfig

    assert applies(EchoConfig().replace(model={"embedder": "birdnet"}))
    assert not applies(EchoConfig().replace(model={"embedder": "birdnet"}, train={"baseline": "none"}))
    assert not applies(EchoConfig().replace(model={"embedder": "birdnet", "multilabel": True}))
    out = tmp_path / "cv"
    assert main(["cv", str(synthetic_dataset), "--folds", "2", "--backbone", "small_cnn", "--epochs", "1",
                 "--out", str(out), "--quiet", "--no-cache"]) == 0
    assert "baseline_accuracy" not in json.loads((out / "metrics.json").read_text())["mean"]


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


@pytest.fixture
def multilabel_blobs():
    """Four independent labels in 20 dimensions, each clip holding any of them; some labels unknown (NaN)."""
    rng = np.random.default_rng(5)
    y = (rng.random((120, 4)) < 0.35).astype(float)
    x = y @ rng.normal(0, 1, (4, 20)) + rng.normal(0, 1.5, (120, 20))
    return StandardScaler().fit_transform(x), y, np.repeat(np.arange(30), 4)


@pytest.mark.parametrize("balanced", [False, True])
def test_multilabel_heads_are_scikit_learns_one_vs_rest_logistic_regression(multilabel_blobs, balanced):
    from sklearn.multiclass import OneVsRestClassifier

    from echoengine.headfit import balanced_weights

    x, y, _ = multilabel_blobs
    weights = balanced_weights(y, 4) if balanced else None
    weight, bias = fit_logistic(x, y, n_classes=4, c=0.3, multilabel=True, sample_weight=weights)
    reference = OneVsRestClassifier(LogisticRegression(C=0.3, max_iter=10_000, tol=1e-10,
                                                       class_weight="balanced" if balanced else None)).fit(x, y)
    ours = torch.sigmoid(torch.as_tensor(x @ weight.T + bias)).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=1e-3)


def test_unknown_labels_are_left_out_of_their_class_only(multilabel_blobs):
    x, y, _ = multilabel_blobs
    masked = y.copy()
    masked[:40, 1] = np.nan  # label 1 unknown on a third of the clips
    weight, _ = fit_logistic(x, masked, n_classes=4, c=1.0, multilabel=True)
    only_known = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(x[40:], y[40:, 1])
    np.testing.assert_allclose(weight[1], only_known.coef_[0], atol=1e-3)
    whole = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10).fit(x, y[:, 0])
    np.testing.assert_allclose(weight[0], whole.coef_[0], atol=1e-3)


def test_multilabel_strength_and_temperature_come_from_the_inner_folds(multilabel_blobs):
    x, y, groups = multilabel_blobs
    y = y.copy()
    y[::7, 2] = np.nan
    fit = select_and_fit(x, y, groups, n_classes=4, multilabel=True, label_smoothing=0.1)
    assert fit.inner_folds == 5 and min(fit.inner_scores.values()) == fit.inner_scores[fit.c]
    assert 0.05 <= fit.temperature <= 20 and fit.ece_after <= fit.ece_before + 1e-9
    assert 0.7 < fit.inner_accuracy <= 1


def test_mixup_and_the_ensemble_still_fit_a_linear_head(blobs):
    x, y, groups = blobs
    plain = select_and_fit(x, y, groups, n_classes=10)
    mixed = select_and_fit(x, y, groups, n_classes=10, mixup=0.4, ensemble=True)
    assert mixed.weight.shape == plain.weight.shape and not np.allclose(mixed.weight, plain.weight)
    assert (np.argmax(x @ mixed.weight.T + mixed.bias, 1) == y).mean() > 0.8


def test_the_mlp_head_is_chosen_by_inner_cv_and_folds_into_one_network(blobs):
    from echoengine.headmlp import CHECKPOINTS, GRID, select_and_train

    x, y, groups = blobs
    windows = np.stack([x, x + np.random.default_rng(0).normal(0, 0.3, x.shape)], 1)  # two windows per clip
    fit = select_and_train(windows, y, groups, n_classes=10, grid=GRID[:2], checkpoints=CHECKPOINTS[:4])
    assert fit.inner_folds == 3 and len(fit.inner_scores) == 8 and fit.settings in fit.inner_scores
    assert fit.inner_scores[fit.settings] == min(fit.inner_scores.values())
    hidden = np.maximum(windows @ fit.first_weight.T + fit.first_bias, 0)
    logits = (hidden @ fit.weight.T + fit.bias).mean(1)
    assert (logits.argmax(1) == y).mean() > 0.9
    ensemble = select_and_train(windows, y, groups, n_classes=10, grid=GRID[:1], checkpoints=(40,), ensemble=True)
    assert ensemble.first_weight.shape[0] == 4 * GRID[0].hidden_size  # the refit and three inner networks


def test_the_mlp_head_falls_back_to_its_default_with_one_recording_per_class(blobs, caplog):
    from echoengine.headmlp import DEFAULT_SETTINGS, select_and_train

    x, y, groups = blobs
    one = groups % 3 == 0
    with caplog.at_level(logging.WARNING):
        fit = select_and_train(x[one][:, None], y[one], groups[one], n_classes=10)
    assert fit.settings == DEFAULT_SETTINGS and fit.inner_folds == 0 and fit.temperature == 1.0
    assert "the mlp head's settings are the default" in caplog.text


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_multilabel_train_on_a_cnn_embedder_fits_the_head_by_inner_cv(synthetic_dataset, tmp_path, capsys, head):
    from echoengine import catalog
    from echoengine.bundle import load_bundle
    from echoengine.cli import main
    from echoengine.config import EchoConfig
    from echoengine.training import fit

    config = EchoConfig().replace(
        audio={"sample_rate": 16000}, frontend={"n_mels": 64, "image_height": 64, "image_width": 64,
                                                "hop_length": 400, "n_fft": 1024, "fmax": 7000.0},
        model={"backbone": "small_cnn", "head": "linear", "dropout": 0.0},
        train={"epochs": 1, "device": "cpu", "learning_rate": 1e-2},
        augment={"embedding_variants": 2}, data={"val_fraction": 0.2, "test_fraction": 0.2})
    table, _ = catalog.scan(catalog.load_catalog(synthetic_dataset), config.audio)
    fit(table, table, catalog.class_names(table), config, tmp_path / "cnn", progress=False, log=lambda line: None)
    config_file = config.save(tmp_path / "small.toml")
    assert main(["mix", str(synthetic_dataset), "--out", str(tmp_path / "mix"), "--count", "16", "--duration", "12",
                 "--events", "1-3", "--config", str(config_file), "--group-regex", r"^(.+_rec\d+)_"]) == 0
    out = tmp_path / "bundle"
    assert main(["train", str(tmp_path / "mix"), "--out", str(out), "--config", str(config_file),
                 "--embedder", f"cnn:{tmp_path / 'cnn'}", "--head", head, "--multilabel", "--no-cache",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert ("linear head fitted by L-BFGS" if head == "linear" else "mlp head trained full-batch") in printed
    assert "cross-validation over the training recordings" in printed or "too few recordings" in printed
    bundle = load_bundle(out)  # the saved config builds the fitted network (the mlp's chosen width)
    assert bundle.config.model.multilabel and bundle.config.convex_head()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["recording"]["lwlrap"] <= 1
