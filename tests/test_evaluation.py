import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from echoengine.evaluation import classification_metrics, expected_calibration_error, format_report, write_report
from echoengine.prediction import clip_means

CLASSES = ["a", "b", "c"]
# Four files with hand-checked answers: predictions a, b, a, c for truths a, b, c, c.
LABELS = np.array([0, 1, 2, 2])
PROBS = np.array([
    [0.6, 0.3, 0.1],
    [0.2, 0.7, 0.1],
    [0.5, 0.1, 0.4],
    [0.1, 0.1, 0.8],
])


def test_metrics_match_hand_computed_values():
    m = classification_metrics(LABELS, PROBS, CLASSES)
    assert m["n"] == 4
    assert m["accuracy"] == 0.75
    # recalls a 1/1, b 1/1, c 1/2
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-4)
    # precision a 1/2, b 1, c 1 -> F1 a 2/3, b 1, c 2/3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3, abs=1e-4)
    per_class = {row["class"]: row for row in m["per_class"]}
    assert per_class["a"]["precision"] == 0.5 and per_class["c"]["recall"] == 0.5
    assert per_class["c"]["support"] == 2
    # ranks of the true class: 1, 1, 2, 1 -> LRAP (1 + 1 + 1/2 + 1) / 4
    assert m["lwlrap"] == pytest.approx(0.875)
    # AP: a = 1 (its positive scores highest), b = 1, c: scores 0.8 (pos), 0.4 (pos) rank 1 and 2 -> 1
    assert m["map"] == pytest.approx(1.0)
    assert m["top5_accuracy"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    # confidences 0.6, 0.7, 0.5, 0.8 fall in four bins: |1-.6| + |1-.7| + |0-.5| + |1-.8| over 4
    assert m["ece"] == pytest.approx((0.4 + 0.3 + 0.5 + 0.2) / 4)


def test_lwlrap_equals_scikit_learn_on_random_predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 200)
    probs = rng.dirichlet(np.ones(6), 200)
    m = classification_metrics(labels, probs, list("abcdef"))
    assert m["lwlrap"] == pytest.approx(label_ranking_average_precision_score(np.eye(6)[labels], probs), abs=1e-4)


def test_top5_counts_the_true_class_among_the_five_best():
    probs = np.tile(np.linspace(0.2, 0.01, 8), (2, 1))  # class 0 best, class 7 worst
    m = classification_metrics(np.array([4, 5]), probs / probs.sum(1, keepdims=True), list("abcdefgh"))
    assert m["accuracy"] == 0 and m["top5_accuracy"] == 0.5


def test_expected_calibration_error_is_zero_when_confidence_is_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_a_clip_is_the_mean_of_its_windows():
    windows = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8]])
    means = clip_means(windows, np.array([1, 1, 0]), n_rows=3)
    assert means[0].tolist() == pytest.approx([0.2, 0.8])
    assert means[1].tolist() == pytest.approx([0.6, 0.4])
    assert np.isnan(means[2]).all()


def test_the_report_is_written_and_readable(tmp_path):
    m = classification_metrics(LABELS, PROBS, CLASSES)
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.9],
                            "train_accuracy": [0.3, 0.6], "val_accuracy": [0.2, 0.5], "learning_rate": [1e-3, 1e-3]})
    written = write_report(m, CLASSES, tmp_path, history=history, best_epoch=2)
    assert {p.name for p in written} == {"metrics.json", "per_class.csv", "confusion.png", "training.png"}
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == 0.75
    assert pd.read_csv(tmp_path / "per_class.csv")["class"].tolist() == CLASSES
    assert all(p.stat().st_size > 10_000 for p in written if p.suffix == ".png")
    text = format_report(m)
    assert "accuracy" in text and "macro_f1" in text and text.count("\n  a ") == 1
