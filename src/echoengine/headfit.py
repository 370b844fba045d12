"""Linear heads fitted to convergence on frozen embeddings, their regularisation chosen by grouped inner CV.

A linear head over the mean of a clip's window embeddings is multinomial
logistic regression: a convex problem over a few hundred cached vectors. It
is solved here in full batches with L-BFGS (seconds, no learning rate, no
epochs, no held-out validation part), with an L2 penalty whose strength is
chosen by cross-validation over the training recordings (folds grouped by
source recording, so that no recording is on both sides), then fitted on all
of them. The objective is scikit-learn's ``LogisticRegression``:

    minimise  C * sum_i w_i * loss_i + ||W||^2 / 2

(here divided by ``C * sum_i w_i``), so ``C`` means what it means there.
The logits of the inner folds' held-out clips also fit a temperature
(calibration): the final head is divided by it.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> X = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(2, 1, (20, 4))])
>>> y = np.repeat([0, 1], 20)
>>> weight, bias = fit_logistic(X, y, n_classes=2, c=1.0)
>>> weight.shape, bias.shape, float((np.argmax(X @ weight.T + bias, 1) == y).mean()) > 0.9
((2, 4), (2,), True)
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold

from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.embeddings import EmbeddingDataset, make_dataset
from echoengine.errors import EchoError
from echoengine.evaluation import expected_calibration_error
from echoengine.models import EmbeddingClassifier, build_model
from echoengine.models.hierarchy import rank_masks, rank_nll

__all__ = ["C_GRID", "DEFAULT_C", "PROTOTYPE_SCALE", "HeadData", "HeadFit", "balanced_weights", "calibrate_held_out",
           "choose_c", "clip_embeddings", "fit_logistic", "fit_prototypes", "fit_temperature", "head_data",
           "mixup_rows", "select_and_fit", "train_linear_head"]

logger = logging.getLogger(__name__)

#: The strengths tried by the inner cross-validation (inverse L2 penalty, as scikit-learn's ``C``).
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: The strength used when the training recordings are too few for an inner split (multi-label heads).
DEFAULT_C = 0.1
#: The logit scale of the class-mean head used, single-label, when the training recordings are too few for an
#: inner split (:func:`fit_prototypes`). Chosen on draws of 2 recordings per class from the ESC-50 subset, where the
#: scale that calibrated the held-out clips best was 9.4-15.5 across draws, features and clips per recording.
PROTOTYPE_SCALE = 12.0


@dataclass
class HeadFit:
    """A fitted head: ``logits = features @ weight.T + bias``, and how it was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    c: float
    temperature: float
    inner_scores: dict[float, float]
    inner_folds: int
    inner_accuracy: float
    ece_before: float
    ece_after: float
    train_loss: float = math.nan
    train_accuracy: float = math.nan
    #: What was fitted, for the training log.
    method: str = "linear head fitted by L-BFGS"
    #: The config the fitted model needs, where the fit chose part of it (None: the training config).
    config: EchoConfig | None = None

    #: Why the settings are a default, when no inner cross-validation could be made.
    fallback: str = "too few recordings per class for an inner cross-validation"

    #: The head is the class means (:func:`fit_prototypes`), not a logistic regression.
    prototypes: bool = False

    def chosen(self) -> str:
        """The settings the fit chose."""
        return f"class means, logit scale {PROTOTYPE_SCALE:g}" if self.prototypes else f"C = {self.c:g}"

    def describe(self) -> str:
        """How the head was chosen, in one line."""
        if not self.inner_folds:
            return f"{self.chosen()} ({self.fallback})"
        return (f"{self.chosen()} chosen by {self.inner_folds}-fold cross-validation over the training recordings "
                f"(held-out log-loss {min(self.inner_scores.values()):.4f}, accuracy {self.inner_accuracy:.3f}); "
                f"temperature {self.temperature:.2f} (inner-fold ECE {self.ece_before:.3f} -> {self.ece_after:.3f})")


def _targets(y: np.ndarray, n_classes: int, smoothing: float, multilabel: bool = False) -> torch.Tensor:
    """Target rows smoothed as the losses of :mod:`echoengine.training` smooth them.

    Class indices become one-hot rows and 2-D rows (soft single-label targets,
    e.g. mixed ones) stay, both moved toward uniform by ``smoothing``;
    multi-label rows move toward 0.5 by ``smoothing / 2`` (as ``MaskedBCE``),
    NaN (unknown) staying NaN.
    """
    if y.ndim == 2:
        rows = torch.as_tensor(y, dtype=torch.float64)
        return rows * (1 - smoothing) + smoothing / (2 if multilabel else n_classes)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(y, dtype=torch.long), n_classes).double()
    return onehot * (1 - smoothing) + smoothing / n_classes


def fit_logistic(x: np.ndarray, y: np.ndarray, *, n_classes: int, c: float = 1.0,
                 sample_weight: np.ndarray | None = None, label_smoothing: float = 0.0,
                 multilabel: bool = False, start: tuple[np.ndarray, np.ndarray] | None = None,
                 max_iter: int = 1000, tolerance: float = 1e-7,
                 memberships: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial (or, ``multilabel``, one-vs-rest) logistic regression by full-batch L-BFGS.

    Parameters
    ----------
    x : np.ndarray, shape (n, d)
        Features (standardise them first: the penalty is on the weights).
    y : np.ndarray, shape (n,) of class indices, or (n, n_classes) of 0/1 (multi-label; NaN: unknown)
    n_classes : int
    c : float
        Inverse strength of the L2 penalty on the weights (not the bias), as scikit-learn's.
    sample_weight : np.ndarray, shape (n,) or, multi-label, (n, n_classes), optional
        Weight of each sample's loss (class weights: the weight of its class),
        or of each of its labels (:func:`balanced_weights`).
    label_smoothing : float
        Single-label targets move toward uniform by this much, multi-label
        ones toward 0.5 by half of it.
    multilabel : bool
        One-vs-rest: a binary cross-entropy per class, NaN labels left out;
        each class's problem is scikit-learn's binary ``LogisticRegression``.
    start : (weight, bias), optional
        Where L-BFGS starts (a nearby solution converges faster); zeros when omitted.
    tolerance : float
        Stop when the largest gradient component falls below it.
    memberships : sequence of np.ndarray
        A joint model of a taxonomy: each class's name index at every rank
        above the classes; each sample's loss adds the negative log of its
        ranks' marginal probabilities (:func:`echoengine.models.hierarchy.rank_nll`).

    Returns
    -------
    weight : np.ndarray, shape (n_classes, d)
    bias : np.ndarray, shape (n_classes,)
    """
    features = torch.as_tensor(x, dtype=torch.float64)
    targets = _targets(np.asarray(y), n_classes, label_smoothing, multilabel)
    weights = torch.ones(len(features), dtype=torch.float64) if sample_weight is None else torch.as_tensor(
        sample_weight, dtype=torch.float64)
    w = torch.zeros(n_classes, features.shape[1], dtype=torch.float64)
    b = torch.zeros(n_classes, dtype=torch.float64)
    if start is not None:
        w, b = torch.as_tensor(start[0], dtype=torch.float64).clone(), torch.as_tensor(start[1], dtype=torch.float64)
    w, b = w.requires_grad_(), b.clone().requires_grad_()
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=tolerance,
                                  tolerance_change=tolerance * 1e-3, history_size=20, line_search_fn="strong_wolfe")
    masks = rank_masks(memberships) if memberships else []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _penalised_loss(features @ w.T + b, targets, weights, w, c=c, multilabel=multilabel, masks=masks)
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def _penalised_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, w: torch.Tensor, *,
                    c: float, multilabel: bool, masks: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """:func:`fit_logistic`'s objective: the weighted loss (and its ranks' with ``masks``) and the L2 penalty,
    divided by ``C * sum of weights``."""
    total = float(weights.sum()) / (logits.shape[1] if weights.ndim == 2 else 1)
    if multilabel:
        known = ~torch.isnan(targets)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.where(known, targets, 0.0), reduction="none") * known
        weighted = ((weights if weights.ndim == 2 else weights[:, None]) * losses).sum()
    else:
        losses = -(targets * torch.log_softmax(logits, 1)).sum(1)
        weighted = (weights * (losses + rank_nll(logits, targets, masks) if masks else losses)).sum()
    return weighted / total + (w * w).sum() / (2 * c * total)


def _grouped_folds(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds grouped by recording and stratified by class; [] when no class has two recordings.

    As many folds as most classes have recordings (the 10th percentile),
    at most ``folds``: a few classes recorded once do not cut the search to
    a default, they are only scored where they were trained on.
    """
    labels = y if y.ndim == 1 else np.argmax(np.nan_to_num(y), 1)
    per_class = np.array([len(np.unique(groups[labels == c])) for c in np.unique(labels)])
    folds = min(folds, int(np.percentile(per_class, 10)))
    if folds < 2 or per_class.max() < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only N members": known, handled
        warnings.simplefilter("ignore", UserWarning)
        return list(splitter.split(np.zeros(len(labels)), labels, groups))


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_classes: int, grid: Sequence[float] = C_GRID,
             folds: int = 5, seed: int = 0, fit: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
             **options) -> tuple[float, dict[float, float], np.ndarray | None, int]:
    """The ``C`` of ``grid`` with the lowest held-out log-loss over inner folds grouped by recording.

    Each inner fold holds out whole recordings (``groups``) and keeps every
    class on both sides where the data allows (at most as many folds as the
    rarest class has recordings). With fewer than 2 recordings in some class
    no inner split exists: :data:`DEFAULT_C` is returned, with 0 folds.
    Held-out clips of a class absent from their fold's training part are
    left out of its score.

    Returns
    -------
    c : float
    scores : dict
        Mean held-out log-loss per ``C``.
    out_of_fold_logits : np.ndarray or None
        Held-out logits of every sample at the chosen ``C`` (None without a split).
    folds : int
        Inner folds used (0: none).
    """
    return _inner_cv(x, y, groups, n_classes=n_classes, grid=grid, folds=folds, seed=seed, fit=fit, **options)[:4]


def _inner_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_classes: int, grid: Sequence[float],
              folds: int, seed: int, fit: Callable[..., tuple[np.ndarray, np.ndarray]] | None,
              **options) -> tuple[float, dict[float, float], np.ndarray | None, int, list]:
    """:func:`choose_c`, and the inner folds' heads at the chosen ``C`` (for an ensemble)."""
    fit = fit or fit_logistic
    splits = _grouped_folds(np.asarray(y), np.asarray(groups), folds, seed)
    if not splits:
        return DEFAULT_C, {}, None, 0, []
    scored = _scorable(y, splits)
    scores, logits_at, heads_at, starts = {}, {}, {}, [None] * len(splits)
    for c in sorted(grid):  # weakest penalty last, each fold starting from its solution at the previous c
        logits = np.zeros((len(x), n_classes))
        for k, (train, held) in enumerate(splits):
            starts[k] = fit(x[train], y[train], n_classes=n_classes, c=c, start=starts[k], **_subset(options, train))
            logits[held] = x[held] @ starts[k][0].T + starts[k][1]
        scores[c] = _log_loss(logits[scored], y[scored])
        logits_at[c], heads_at[c] = logits, list(starts)
    best = min(scores, key=lambda c: (scores[c], -c))
    return best, scores, np.where(scored[:, None], logits_at[best], np.nan), len(splits), heads_at[best]


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" class weights of every sample, or (multi-label) of every label.

    Single-label: ``n / (n_present * count of the class)`` per sample.
    Multi-label: each class is its own binary problem, so a positive label
    weighs ``known / (2 * positives)`` and a negative ``known / (2 * negatives)``
    (what ``OneVsRestClassifier(LogisticRegression(class_weight="balanced"))``
    gives each class); NaN labels weigh 1 (they are left out anyway).

    Examples
    --------
    >>> balanced_weights(np.array([0, 0, 0, 1]), 2).round(3).tolist()
    [0.667, 0.667, 0.667, 2.0]
    >>> balanced_weights(np.array([[1.0], [0.0], [0.0], [np.nan]]), 1).round(3).tolist()
    [[1.5], [0.75], [0.75], [1.0]]
    """
    y = np.asarray(y)
    if y.ndim == 1:
        counts = np.bincount(y, minlength=n_classes)
        return (len(y) / (np.count_nonzero(counts) * counts))[y]
    known = ~np.isnan(y)
    positive = np.nan_to_num(y) > 0.5
    n_known = known.sum(0)
    pos, neg = (positive & known).sum(0), (~positive & known).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(positive, n_known / (2 * pos), n_known / (2 * neg))
    return np.where(known & np.isfinite(weights), weights, 1.0)


def mixup_rows(x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None, *, n_classes: int, alpha: float,
               rng: np.random.Generator, copies: int = 1,
               multilabel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Feature-space mixup: the rows, and ``copies`` mixtures of each with a random partner, soft targets.

    ``lambda ~ Beta(alpha, alpha)`` per mixture; features, targets (one-hot
    or multi-hot; NaN when either label is unknown) and weights are mixed
    alike. Mixes only the rows given: an inner fold's training rows.
    """
    y = np.asarray(y, dtype=np.float64)
    targets = np.eye(n_classes)[y.astype(np.int64)] if not multilabel else y
    weights = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    xs, ys, ws = [x], [targets], [weights]
    for _ in range(copies):
        partner = rng.permutation(len(x))
        lam = rng.beta(alpha, alpha, len(x))[:, None]
        xs.append(lam * x + (1 - lam) * x[partner])
        ys.append(lam * targets + (1 - lam) * targets[partner])
        lam_w = lam if weights.ndim == 2 else lam[:, 0]
        ws.append(lam_w * weights + (1 - lam_w) * weights[partner])
    return np.concatenate(xs), np.concatenate(ys), None if sample_weight is None else np.concatenate(ws)


def _mixup_fit(alpha: float, seed: int) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """:func:`fit_logistic` on the rows it is given and their mixtures (:func:`mixup_rows`)."""
    def fit(x: np.ndarray, y: np.ndarray, *, n_classes: int, sample_weight: np.ndarray | None = None,
            multilabel: bool = False, **options) -> tuple[np.ndarray, np.ndarray]:
        mixed = mixup_rows(x, y, sample_weight, n_classes=n_classes, alpha=alpha, multilabel=multilabel,
                           rng=np.random.default_rng([seed, len(x)]))
        return fit_logistic(mixed[0], mixed[1], n_classes=n_classes, sample_weight=mixed[2], multilabel=multilabel,
                            **options)
    return fit


def _scorable(y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Which samples, when held out, had their class (all their labels) in the training part."""
    scorable = np.zeros(len(y), dtype=bool)
    for train, held in splits:
        if y.ndim == 1:
            scorable[held] = np.isin(y[held], y[train])
        else:
            present = np.nansum(y[train], 0) > 0
            scorable[held] = ((np.nan_to_num(y[held]) > 0) <= present).all(1)
    return scorable


def _subset(options: dict, rows: np.ndarray) -> dict:
    """Per-sample options (``sample_weight``) restricted to some rows."""
    weight = options.get("sample_weight")
    return {**options, "sample_weight": None if weight is None else weight[rows]}


def _log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (multi-label: mean binary cross-entropy of known labels)."""
    tensor = torch.as_tensor(logits, dtype=torch.float64)
    if y.ndim == 2:
        targets = torch.as_tensor(y, dtype=torch.float64)
        known = ~torch.isnan(targets)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(tensor[known], targets[known])
        return float(losses)
    return float(torch.nn.functional.cross_entropy(tensor, torch.as_tensor(y, dtype=torch.long)))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the log-loss of ``logits / T`` (Guo et al. 2017), in [0.05, 20].

    Examples
    --------
    >>> logits = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [4.0, 0.0]])
    >>> round(fit_temperature(logits, np.array([0, 1, 1, 0])), 1) > 1  # overconfident: cooled
    True
    """
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    tensor = torch.as_tensor(logits, dtype=torch.float64)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _torch_log_loss(tensor / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(math.exp(float(log_t.detach())), 0.05, 20.0))


def _torch_log_loss(logits: torch.Tensor, y: np.ndarray) -> torch.Tensor:
    if y.ndim == 2:
        targets = torch.as_tensor(y, dtype=torch.float64)
        known = ~torch.isnan(targets)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
    return torch.nn.functional.cross_entropy(logits, torch.as_tensor(y, dtype=torch.long))


def _ece(logits: np.ndarray, y: np.ndarray) -> float:
    """Expected calibration error of the softmax of some logits (multi-label: of every known label's sigmoid)."""
    if y.ndim == 2:
        known = ~np.isnan(y)
        p = torch.sigmoid(torch.as_tensor(logits[known])).numpy()
        return float(expected_calibration_error(np.stack([1 - p, p], 1), (y[known] > 0.5).astype(np.int64)))
    return float(expected_calibration_error(torch.softmax(torch.as_tensor(logits), 1).numpy(), y))


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Share of right answers: the top class, or (multi-label) the right yes/no at 0.5 among the known labels."""
    if y.ndim == 2:
        known = ~np.isnan(y)
        return float(((logits[known] > 0) == (y[known] > 0.5)).mean())
    return float((logits.argmax(1) == y).mean())


def calibrate_held_out(held_out: np.ndarray | None, y: np.ndarray, *,
                       calibrate: bool = True) -> tuple[float, float, float, float]:
    """(temperature, accuracy, ECE before, ECE after) of the inner folds' held-out logits (NaN rows: unscored)."""
    if held_out is None:
        return 1.0, math.nan, math.nan, math.nan
    rows = ~np.isnan(held_out).any(1)
    held_out, y = held_out[rows], np.asarray(y)[rows]
    if not len(y):
        return 1.0, math.nan, math.nan, math.nan
    temperature = fit_temperature(held_out, y) if calibrate else 1.0
    before = _ece(held_out, y)
    after = _ece(held_out / temperature, y) if calibrate else math.nan
    return temperature, _accuracy(held_out, y), before, after


def fit_prototypes(x: np.ndarray, y: np.ndarray, *, n_classes: int,
                   scale: float = PROTOTYPE_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """A nearest-class-mean head: ``logits ~ scale * cosine(features, class mean)``, as a linear head.

    Each class's weight is its mean standardised feature vector, normalised
    to unit length and divided by the mean norm of the training rows, so a
    logit is about ``scale`` times the cosine between a clip and the class
    mean; the bias is 0 (every class counts alike, however many clips it
    has). With one recording per class it beats a logistic regression: the
    penalty that keeps the regression from fitting the one recording's
    noise also pulls it toward the classes with the most clips.

    Examples
    --------
    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    >>> weight, bias = fit_prototypes(x, np.array([0, 0, 1]), n_classes=2)
    >>> np.argmax(x @ weight.T + bias, 1).tolist(), bias.tolist()
    ([0, 0, 1], [0.0, 0.0])
    """
    weight = np.zeros((n_classes, x.shape[1]))
    for label in np.unique(y):
        weight[label] = x[y == label].mean(0)
    norms = np.linalg.norm(weight, axis=1, keepdims=True)
    weight = np.divide(weight, norms, out=np.zeros_like(weight), where=norms > 0)
    return weight * scale / max(float(np.linalg.norm(x, axis=1).mean()), 1e-12), np.zeros(n_classes)


def select_and_fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_classes: int, grid: Sequence[float] = C_GRID,
                   folds: int = 5, seed: int = 0, calibrate: bool = True, mixup: float = 0.0, ensemble: bool = False,
                   **options) -> HeadFit:
    """Choose ``C`` by grouped inner CV, fit on all samples, and fit a temperature on the inner folds' logits.

    ``options`` go to :func:`fit_logistic` (``sample_weight``,
    ``label_smoothing``, ``multilabel``). A single-value ``grid`` skips the
    search but still calibrates when an inner split exists. ``mixup`` (a
    Beta alpha, 0: off) adds a mixed copy of every training row to every fit
    (:func:`mixup_rows`); ``ensemble`` averages the logits of the inner
    folds' heads at the chosen ``C`` and the head fitted on all samples (a
    linear head still: their weights averaged). Without an inner split (a
    class recorded once) the head is the class means (:func:`fit_prototypes`)
    or, multi-label, the logistic regression at :data:`DEFAULT_C`, with a
    warning.
    """
    fit = _mixup_fit(mixup, seed) if mixup > 0 else fit_logistic
    c, scores, held_out, used, members = _inner_cv(x, y, groups, n_classes=n_classes, grid=grid, folds=folds,
                                                   seed=seed, fit=fit, **options)
    if not used:
        return _fallback(x, y, n_classes=n_classes, **options)
    weight, bias = fit(x, y, n_classes=n_classes, c=c, **options)
    if ensemble and members:
        weight = np.mean([w for w, _ in members] + [weight], axis=0)
        bias = np.mean([b for _, b in members] + [bias], axis=0)
    temperature, accuracy, before, after = calibrate_held_out(held_out, y, calibrate=calibrate)
    return HeadFit(weight / temperature, bias / temperature, c, temperature, scores, used, accuracy, before, after)


def _fallback(x: np.ndarray, y: np.ndarray, *, n_classes: int, multilabel: bool = False, **options) -> HeadFit:
    """The head fitted when no inner cross-validation can be made, and the warning that says so."""
    reason = "too few recordings per class for an inner cross-validation (a class has fewer than 2)"
    if multilabel:
        logger.warning("%s: the head's L2 strength is the default C = %g", reason, DEFAULT_C)
        weight, bias = fit_logistic(x, y, n_classes=n_classes, c=DEFAULT_C, multilabel=True, **options)
        return HeadFit(weight, bias, DEFAULT_C, 1.0, {}, 0, math.nan, math.nan, math.nan)
    logger.warning("%s: the head is the class means (nearest-class-mean, logit scale %g)", reason, PROTOTYPE_SCALE)
    weight, bias = fit_prototypes(x, y, n_classes=n_classes)
    return HeadFit(weight, bias, math.nan, 1.0, {}, 0, math.nan, math.nan, math.nan, prototypes=True,
                   method="class-mean head")


def clip_embeddings(data: EmbeddingDataset) -> tuple[np.ndarray, np.ndarray]:
    """The mean window embedding of every readable clip of an (evaluation) embedding dataset, and its row.

    A linear head's mean over a clip's window logits is the head applied to
    the mean of its window embeddings, so a clip is one vector.
    """
    windows, rows = _readable(data, variants=1)
    return windows.mean(1), rows


def _readable(data: EmbeddingDataset, *, variants: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The window embeddings (items, windows, d) of every readable item (of each variant), rows and targets."""
    data.precompute()
    windows, rows, targets = [], [], []
    for index, (row, _) in enumerate(data.items):
        for variant in range(variants):
            item = data[(index, variant)] if data.train else data[index]
            if item is not None:
                windows.append(item[0].double().numpy())
                rows.append(row)
                targets.append(item[1].numpy())
    if not windows:
        raise EchoError("no training clip could be read")
    return np.stack(windows), np.array(rows), targets


@dataclass
class HeadData:
    """The training clips of a head on frozen embeddings, as arrays.

    windows : (n, windows, d) window embeddings of each clip (float64)
    targets : (n,) class indices, or (n, n_classes) multi-hot labels (NaN: unknown)
    groups : (n,) source recording of each clip (inner folds never split one)
    sample_weight : (n,) or (n, n_classes) loss weights (``train.class_weights``), or None
    """

    windows: np.ndarray
    targets: np.ndarray
    groups: np.ndarray
    sample_weight: np.ndarray | None
    multilabel: bool
    #: (n,) the table row (file) of each clip.
    rows: np.ndarray | None = None


def head_data(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *, cache: FeatureCache | None = None,
              progress: bool = False, boxes: pd.DataFrame | None = None) -> HeadData:
    """The clips a head is fitted on: every clip-length window of every file (single-label), or (multi-label,
    ``boxes`` given) the training crops around each box and the background crops, all their cached variants,
    as the epoch loop trains on them."""
    multilabel = config.model.multilabel
    if multilabel != (boxes is not None):
        raise EchoError("multi-label training needs annotated boxes and model.multilabel = true, together")
    data = make_dataset(table, classes, config, train=multilabel, cache=cache, progress=progress, boxes=boxes,
                        clips=True)
    windows, rows, targets = _readable(data, variants=data.variants if multilabel else 1)
    if multilabel:
        group_of = dict(zip(table["path"], table["group"], strict=True))
        groups = np.array([group_of[data.paths[row]] for row in rows])
        y = np.stack(targets).astype(np.float64)
    else:
        groups = table["group"].to_numpy()[rows]
        y = np.asarray(data.targets)[rows]
    weight = balanced_weights(y, len(classes)) if config.train.class_weights == "balanced" else None
    return HeadData(windows, y, groups, weight, multilabel, rows)


def train_linear_head(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *,
                      cache: FeatureCache | None = None, progress: bool = False, boxes: pd.DataFrame | None = None,
                      memberships: Sequence[np.ndarray] = ()) -> tuple[EmbeddingClassifier, HeadFit]:
    """An embedding model whose linear head is fitted by :func:`select_and_fit` on the clips of ``table``.

    The clip embeddings are standardised with their own mean and standard
    deviation (the model's ``mean``/``std`` buffers), balanced class weights,
    label smoothing, feature-space mixup and the inner-CV ensemble follow
    ``config.train``, and the inner folds are grouped by the table's
    ``group`` column (source recordings). Multi-label (``boxes`` given):
    one-vs-rest binary cross-entropy on :func:`head_data`'s crops. ``memberships``:
    a joint model's loss at every rank (:func:`fit_logistic`).
    """
    data = head_data(table, classes, config, cache=cache, progress=progress, boxes=boxes)
    features = data.windows.mean(1)
    mean, std = features.mean(0), np.maximum(features.std(0), 1e-6)
    x = (features - mean) / std
    train = config.train
    fit = select_and_fit(x, data.targets, data.groups, n_classes=len(classes), seed=train.seed,
                         sample_weight=data.sample_weight, label_smoothing=train.label_smoothing,
                         multilabel=data.multilabel, mixup=train.head_mixup, ensemble=train.head_ensemble,
                         **({"memberships": memberships} if memberships else {}))
    logits = x @ fit.weight.T + fit.bias
    fit.train_loss, fit.train_accuracy = _log_loss(logits, data.targets), _accuracy(logits, data.targets)
    model = build_model(config.model, len(classes))
    linear = next(module for module in model.head.modules() if isinstance(module, torch.nn.Linear))
    with torch.no_grad():
        model.mean.copy_(torch.as_tensor(mean))
        model.std.copy_(torch.as_tensor(std))
        linear.weight.copy_(torch.as_tensor(fit.weight))
        linear.bias.copy_(torch.as_tensor(fit.bias))
    return model.eval(), fit
