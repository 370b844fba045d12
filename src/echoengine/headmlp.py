"""MLP heads trained full-batch on cached embeddings, their settings chosen by grouped inner CV.

The ``mlp`` head on a frozen embedder (one hidden ReLU layer, dropout, a
linear layer, applied to every window and averaged over a clip's windows) is
trained here on the cached window embeddings of all training clips at once:
no mini-batches, no held-out validation part. Its hidden size, dropout,
weight decay and number of epochs (full-batch AdamW steps) are chosen by the
inner cross-validation of :mod:`echoengine.headfit` (folds grouped by source
recording): every inner fold's network is trained side by side (one batched
network), scored on its held-out recordings at several epochs, and the
settings with the lowest held-out log-loss are trained again on all clips.
A temperature fitted on the inner folds' held-out logits calibrates it.

To keep this fast on a CPU, the network sees the standardised embeddings
projected on their first :data:`COMPONENTS` principal components (computed
on each fit's own training rows); the projection is folded into the first
layer of the saved head, which takes the embeddings as they are.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> windows = np.concatenate([rng.normal(0, 1, (12, 2, 16)), rng.normal(1.5, 1, (12, 2, 16))])
>>> y, groups = np.repeat([0, 1], 12), np.arange(24) // 2
>>> fit = select_and_train(windows, y, groups, n_classes=2, grid=GRID[:1], checkpoints=(20, 40))
>>> fit.inner_folds, fit.settings.epochs in (20, 40), fit.first_weight.shape
(5, True, (64, 16))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from echoengine.cache import FeatureCache
from echoengine.config import EchoConfig
from echoengine.headfit import (
    HeadFit,
    _accuracy,
    _grouped_folds,
    _log_loss,
    _scorable,
    _targets,
    calibrate_held_out,
    head_data,
)
from echoengine.models import EmbeddingClassifier, build_model

__all__ = ["CHECKPOINTS", "COMPONENTS", "DEFAULT_SETTINGS", "GRID", "MLPFit", "MLPSettings", "select_and_train",
           "train_mlp_head"]

logger = logging.getLogger(__name__)

#: Principal components of the standardised embeddings the network sees.
COMPONENTS = 128
#: Full-batch AdamW learning rate.
LEARNING_RATE = 3e-3


@dataclass(frozen=True)
class MLPSettings:
    """What the inner cross-validation chooses: the MLP's width and regularisation, and its training length."""

    hidden_size: int = 512
    dropout: float = 0.5
    weight_decay: float = 1e-2
    epochs: int = 80


#: The settings tried (each scored at every one of :data:`CHECKPOINTS` epochs).
GRID = (MLPSettings(64, 0.25, 1e-2), MLPSettings(256, 0.25, 1e-2), MLPSettings(256, 0.5, 1e-1))
#: The numbers of full-batch epochs scored.
CHECKPOINTS = (10, 20, 40, 80, 160)
#: The settings used when the training recordings are too few for an inner split.
DEFAULT_SETTINGS = MLPSettings(256, 0.5, 1e-2, 80)


@dataclass
class MLPFit(HeadFit):
    """A fitted MLP head: ``first_weight``/``first_bias`` (hidden, d), ``weight``/``bias`` (classes, hidden)."""

    first_weight: np.ndarray = None
    first_bias: np.ndarray = None
    settings: MLPSettings = DEFAULT_SETTINGS
    fallback: str = "the default: too few recordings per class for an inner cross-validation"
    method: str = "mlp head trained full-batch"

    def chosen(self) -> str:
        """The settings the fit chose."""
        s = self.settings
        return f"hidden {s.hidden_size}, dropout {s.dropout:g}, weight decay {s.weight_decay:g}, {s.epochs} epochs"


def _projection(windows: np.ndarray, rows: np.ndarray, components: int) -> np.ndarray:
    """The first principal axes (d, r) of some clips' windows."""
    flat = windows[rows].reshape(-1, windows.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return vt[: min(components, len(vt))].T


def _init(members: int, inputs: int, hidden: int, classes: int, generator: torch.Generator) -> dict:
    """``members`` one-hidden-layer networks side by side (``nn.Linear``'s uniform initialisation)."""
    def uniform(*shape: int, fan_in: int) -> torch.Tensor:
        return ((torch.rand(*shape, generator=generator) * 2 - 1) / math.sqrt(fan_in)).requires_grad_()

    return {"w1": uniform(members, inputs, hidden, fan_in=inputs), "b1": uniform(members, 1, 1, hidden, fan_in=inputs),
            "w2": uniform(members, hidden, classes, fan_in=hidden), "b2": uniform(members, 1, classes, fan_in=hidden)}


def _forward(params: dict, x: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """(members, n, windows, r) -> clip logits (members, n, classes), the mean of the windows' logits."""
    hidden = torch.relu(torch.einsum("knwr,krh->knwh", x, params["w1"]) + params["b1"])
    if dropout:
        hidden = torch.nn.functional.dropout(hidden, dropout, training=True)
    return torch.einsum("knwh,khc->knwc", hidden, params["w2"]).mean(2) + params["b2"]


def _loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Sum over members of their weighted mean loss (weights 0 outside a member's training rows)."""
    if multilabel:
        known = ~torch.isnan(targets)
        losses = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, torch.where(known, targets, 0.0).expand_as(logits), reduction="none")
        weights = weights * known
        return ((losses * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1e-12)).sum()
    losses = -(targets * torch.log_softmax(logits, -1)).sum(-1)
    return ((losses * weights).sum(1) / weights.sum(1).clamp_min(1e-12)).sum()


def _train(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, settings: MLPSettings, *,
           checkpoints: Sequence[int], multilabel: bool, mixup: float, seed: int) -> dict[int, dict]:
    """Train the members full-batch (AdamW); a copy of their parameters at every checkpoint epoch."""
    generator = torch.Generator().manual_seed(seed)
    params = _init(x.shape[0], x.shape[-1], settings.hidden_size, targets.shape[-1], generator)
    optimizer = torch.optim.AdamW(params.values(), lr=LEARNING_RATE, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout masks
    kept = {}
    for epoch in range(1, max(checkpoints) + 1):
        inputs, y = (x, targets) if mixup <= 0 else _mix(x, targets, weights, mixup, rng)
        loss = _loss(_forward(params, inputs, settings.dropout), y, weights, multilabel)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if epoch in checkpoints:
            kept[epoch] = {name: value.detach().clone() for name, value in params.items()}
    return kept


def _mix(x: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, alpha: float,
         rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's training rows mixed with a random partner among them (feature-space mixup)."""
    members, n = weights.shape[:2]
    partner = np.tile(np.arange(n), (members, 1))
    train = (weights.reshape(members, n, -1) > 0).any(-1).numpy()
    for k in range(members):
        rows = np.flatnonzero(train[k])
        partner[k, rows] = rng.permutation(rows)
    lam = torch.as_tensor(rng.beta(alpha, alpha, (members, n)), dtype=x.dtype)
    index = torch.as_tensor(partner)
    other = torch.stack([x[k, index[k]] for k in range(members)])
    mixed_x = lam[..., None, None] * x + (1 - lam[..., None, None]) * other
    y = targets.expand(members, *targets.shape[-2:])
    mixed_y = lam[..., None] * y + (1 - lam[..., None]) * torch.stack([y[k, index[k]] for k in range(members)])
    return mixed_x, mixed_y


def _member_weights(masks: np.ndarray, sample_weight: np.ndarray | None, multilabel: bool,
                    n_classes: int) -> torch.Tensor:
    """(members, n) or, multi-label, (members, n, classes) loss weights: 0 outside each member's rows."""
    base = np.ones(masks.shape[1]) if sample_weight is None else sample_weight
    weights = masks.astype(np.float64) if base.ndim == 1 else masks[..., None].astype(np.float64)
    weights = weights * base
    if multilabel and weights.ndim == 2:
        weights = np.repeat(weights[..., None], n_classes, axis=2)
    return torch.as_tensor(weights, dtype=torch.float32)


def _project(windows: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Each member's inputs: the windows on the principal axes of its training rows, (members, n, windows, r)."""
    projections = [_projection(windows, np.flatnonzero(mask), COMPONENTS) for mask in masks]
    rank = min(p.shape[1] for p in projections)
    projections = [p[:, :rank] for p in projections]
    return torch.as_tensor(np.stack([windows @ p for p in projections]), dtype=torch.float32), projections


def _head_of(params: dict, k: int, projection: np.ndarray) -> tuple[np.ndarray, ...]:
    """Member ``k`` as (first weight (h, d), first bias (h,), weight (c, h), bias (c,)) on the unprojected input."""
    return ((projection @ params["w1"][k].double().numpy()).T, params["b1"][k].reshape(-1).double().numpy(),
            params["w2"][k].double().numpy().T, params["b2"][k].reshape(-1).double().numpy())


def _combine(heads: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Networks whose logits are averaged, as one network with all their hidden units."""
    return (np.concatenate([h[0] for h in heads]), np.concatenate([h[1] for h in heads]),
            np.concatenate([h[2] for h in heads], axis=1) / len(heads), np.mean([h[3] for h in heads], axis=0))


def _search(windows: np.ndarray, y: np.ndarray, splits: list, targets: torch.Tensor, weights: np.ndarray | None, *,
            grid: Sequence[MLPSettings], checkpoints: Sequence[int], **options) -> tuple:
    """The settings (and epochs) of ``grid`` with the lowest held-out log-loss: (settings, scores, held-out logits,
    the inner folds' networks)."""
    masks = np.zeros((len(splits), len(y)), dtype=bool)
    for k, (train, _) in enumerate(splits):
        masks[k, train] = True
    x, projections = _project(windows, masks)
    member_weights = _member_weights(masks, weights, options["multilabel"], targets.shape[-1])
    scored = _scorable(y, splits)
    scores, best = {}, None
    for settings in grid:
        kept = _train(x, targets, member_weights, settings, checkpoints=checkpoints, **options)
        for epoch, params in kept.items():
            with torch.no_grad():
                logits = _forward(params, x).double().numpy()
            held_out = np.zeros(logits.shape[1:])
            for k, (_, held) in enumerate(splits):
                held_out[held] = logits[k, held]
            chosen = replace(settings, epochs=epoch)
            scores[chosen] = _log_loss(held_out[scored], y[scored])
            if best is None or scores[chosen] < scores[best[0]]:
                best = (chosen, held_out, params)
    chosen, held_out, params = best
    members = [_head_of(params, k, projections[k]) for k in range(len(splits))]
    return chosen, scores, np.where(scored[:, None], held_out, np.nan), members


def select_and_train(windows: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_classes: int,
                     grid: Sequence[MLPSettings] = GRID, checkpoints: Sequence[int] = CHECKPOINTS, folds: int = 5,
                     seed: int = 0, calibrate: bool = True, sample_weight: np.ndarray | None = None,
                     label_smoothing: float = 0.0, multilabel: bool = False, mixup: float = 0.0,
                     ensemble: bool = False) -> MLPFit:
    """Choose an MLP's settings by grouped inner CV, train it on all clips, and calibrate it on the inner folds.

    Parameters
    ----------
    windows : np.ndarray, shape (n, windows, d)
        Standardised window embeddings of each clip.
    y : np.ndarray, shape (n,) of class indices, or (n, n_classes) of 0/1 (multi-label; NaN: unknown)
    groups : np.ndarray, shape (n,)
        Source recordings: inner folds never split one.
    sample_weight, label_smoothing, multilabel
        As :func:`echoengine.headfit.fit_logistic`.
    mixup : float
        Feature-space mixup at every epoch, Beta(mixup, mixup) weights (0: off).
    ensemble : bool
        Average the inner folds' networks (at the chosen settings) with the
        one trained on all clips: one wider network.

    Without an inner split (a class has fewer than 2 recordings),
    :data:`DEFAULT_SETTINGS` are trained, with a message.
    """
    y = np.asarray(y)
    options = {"multilabel": multilabel, "mixup": mixup, "seed": seed}
    targets = _targets(y, n_classes, label_smoothing, multilabel).float()[None]
    splits = _grouped_folds(y, np.asarray(groups), folds, seed)
    if splits:
        settings, scores, held_out, members = _search(windows, y, splits, targets, sample_weight, grid=grid,
                                                      checkpoints=checkpoints, **options)
    else:
        logger.warning("too few recordings per class for an inner cross-validation (a class has fewer than 2): "
                       "the mlp head's settings are the default %s", DEFAULT_SETTINGS)
        settings, scores, held_out, members = DEFAULT_SETTINGS, {}, None, []
    everything = np.ones((1, len(y)), dtype=bool)
    x, projections = _project(windows, everything)
    params = _train(x, targets, _member_weights(everything, sample_weight, multilabel, n_classes), settings,
                    checkpoints=(settings.epochs,), **options)[settings.epochs]
    first_weight, first_bias, weight, bias = _combine([_head_of(params, 0, projections[0])]
                                                      + (members if ensemble else []))
    temperature, accuracy, before, after = calibrate_held_out(held_out, y, calibrate=calibrate)
    return MLPFit(weight=weight / temperature, bias=bias / temperature, c=math.nan, temperature=temperature,
                  inner_scores=scores, inner_folds=len(splits), inner_accuracy=accuracy, ece_before=before,
                  ece_after=after, first_weight=first_weight, first_bias=first_bias, settings=settings)


def train_mlp_head(table: pd.DataFrame, classes: Sequence[str], config: EchoConfig, *,
                   cache: FeatureCache | None = None, progress: bool = False,
                   boxes: pd.DataFrame | None = None) -> tuple[EmbeddingClassifier, MLPFit]:
    """An embedding model whose MLP head is chosen and trained by :func:`select_and_train` on the clips of ``table``.

    The window embeddings are standardised with their own mean and standard
    deviation (the model's buffers); class weights, label smoothing, mixup
    and the ensemble follow ``config.train`` (``head_mixup``,
    ``head_ensemble``). The returned fit's ``config`` holds the chosen
    ``model.hidden_size`` and ``model.dropout``: the model's bundle needs it.
    """
    data = head_data(table, classes, config, cache=cache, progress=progress, boxes=boxes)
    flat = data.windows.reshape(-1, data.windows.shape[-1])
    mean, std = flat.mean(0), np.maximum(flat.std(0), 1e-6)
    train = config.train
    fit = select_and_train((data.windows - mean) / std, data.targets, data.groups, n_classes=len(classes),
                           seed=train.seed, sample_weight=data.sample_weight, label_smoothing=train.label_smoothing,
                           multilabel=data.multilabel, mixup=train.head_mixup, ensemble=train.head_ensemble)
    fit.config = config.replace(model={"hidden_size": len(fit.first_bias), "dropout": fit.settings.dropout})
    model = build_model(fit.config.model, len(classes))
    first, last = [module for module in model.head.modules() if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        model.mean.copy_(torch.as_tensor(mean))
        model.std.copy_(torch.as_tensor(std))
        for layer, (weight, bias) in ((first, (fit.first_weight, fit.first_bias)), (last, (fit.weight, fit.bias))):
            layer.weight.copy_(torch.as_tensor(weight))
            layer.bias.copy_(torch.as_tensor(bias))
        logits = model.eval()(torch.as_tensor(data.windows, dtype=torch.float32)).double().numpy()
    fit.train_loss, fit.train_accuracy = _log_loss(logits, data.targets), _accuracy(logits, data.targets)
    return model, fit
