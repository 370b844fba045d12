"""The simplest strong baseline, scored beside every cross-validated model on the same folds.

What anyone can write in ten lines of scikit-learn: ``StandardScaler`` and
``LogisticRegression(C=1)`` on the mean of each file's window embeddings,
the same embeddings the model's head reads (for ``--embedder birdnet``: the
embedding, BirdNET's pooled blocks and the playback-speed views). ``cv``
fits it on each fold's training files and scores it on the fold's test
files, so that a model that loses to it says so (``baseline_accuracy``,
``baseline_macro_f1`` and ``baseline_ece`` beside the model's own metrics;
``train.baseline = "none"`` leaves it out).
A model of another kind (a CNN, BirdNET fine-tuned) has no embeddings of its
own to compare on, and multi-label runs are left out.

Examples
--------
>>> from echoengine.config import EchoConfig
>>> applies(EchoConfig().replace(model={"embedder": "birdnet"})), applies(EchoConfig())
(True, False)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.headfit import head_data
from echoengine.kinds import EMBEDDINGS
from echoengine.metrics import BASELINE_KEYS, classification_metrics

__all__ = ["BASELINE", "applies", "baseline_metrics", "file_embeddings"]

#: How the baseline is named where it is reported.
BASELINE = "StandardScaler + LogisticRegression(C=1) on the same clip-mean embeddings"


def applies(config: EchoConfig) -> bool:
    """Whether ``cv`` scores the baseline beside this model: a single-label head on an embedder, unless
    ``train.baseline = "none"``."""
    return (config.train.baseline == "auto" and config.model.kind.input == EMBEDDINGS
            and not config.model.multilabel)


def file_embeddings(table: pd.DataFrame, classes: list[str], config: EchoConfig, *,
                    cache: FeatureCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One vector per readable file of ``table`` (the mean of its clips' window embeddings) and its table row.

    Examples
    --------
    >>> x, rows = file_embeddings(table, classes, EchoConfig().replace(model={"embedder": "birdnet"}))  # doctest: +SKIP
    >>> x.shape  # doctest: +SKIP
    (12, 3344)
    """
    data = head_data(table, classes, config, cache=cache)
    rows, clip_file = np.unique(data.rows, return_inverse=True)
    sums = np.zeros((len(rows), data.windows.shape[-1]))
    np.add.at(sums, clip_file, data.windows.mean(1))
    return sums / np.bincount(clip_file)[:, None], rows


def baseline_metrics(train: pd.DataFrame, test: pd.DataFrame, classes: list[str], config: EchoConfig, *,
                     cache: FeatureCache | None = None) -> dict[str, float]:
    """The baseline fitted on all of ``train`` (a model trained by epochs also selects on part of it) and scored
    on the readable files of ``test``: its accuracy, macro-F1 and ECE, keyed ``baseline_*`` (empty when no test
    file can be read or the training files hold one class).

    Examples
    --------
    >>> baseline_metrics(train, test, classes, config)  # doctest: +SKIP
    {'baseline_accuracy': 0.786, 'baseline_macro_f1': 0.744, 'baseline_ece': 0.11}
    """
    x_train, train_rows = file_embeddings(train, classes, config, cache=cache)
    index = {label: i for i, label in enumerate(classes)}
    y_train = train["label"].map(index).to_numpy()[train_rows]
    try:
        x_test, test_rows = file_embeddings(test, classes, config, cache=cache)
    except EchoError:  # no test file readable
        return {}
    if len(np.unique(y_train)) < 2:
        return {}
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(x_train), y_train)
    probabilities = np.zeros((len(test_rows), len(classes)))
    probabilities[:, model.classes_] = model.predict_proba(scaler.transform(x_test))
    scores = classification_metrics(test["label"].map(index).to_numpy()[test_rows], probabilities, classes)
    return {key: scores[key.removeprefix("baseline_")] for key in BASELINE_KEYS}
