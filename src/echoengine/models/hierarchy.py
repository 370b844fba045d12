"""Models of a taxonomy: the per-node model as one module, and the loss at every rank of a joint model.

Every model of a taxonomy outputs one score per label (the leaves); a
rank's probability is the sum of its labels' (:mod:`echoengine.taxonomy`).

:class:`NodeModels` holds one ordinary model per internal node of the tree
(its children's logits) and returns, as its "logits", the log-probability
of each label: the sum down the label's path of the log-softmax of each
node's logits at the child on the path. Their softmax is the product of the
nodes' softmaxes, so scorers, file pooling and the ONNX export treat it as
any model. :func:`rank_nll` and :class:`JointLoss` give a model over the
labels a loss at every rank: the negative log of each rank's marginal
probability (the sum of its labels' softmax).

Examples
--------
>>> paths = node_paths([(("A",), ["a1", "a2"]), ((), ["A", "B"])], ["a1", "a2", "b1"],
...                    {"a1": ("A", "a1"), "a2": ("A", "a2"), "b1": ("B", "b1")})
>>> paths.int().tolist()  # rows: children A/a1, A/a2, then root's A, B; columns: the labels
[[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["JointLoss", "NodeModels", "modelled_nodes", "node_paths", "rank_masks", "rank_nll"]

#: One node of a taxonomy's tree: the names above its children, and the children.
Node = tuple[tuple[str, ...], Sequence[str]]


def modelled_nodes(nodes: Sequence[Node]) -> list[Node]:
    """The nodes that have a model: two or more children (a single child's probability is 1).

    >>> modelled_nodes([((), ["A", "B"]), (("A",), ["a1"])])
    [((), ['A', 'B'])]
    """
    return [(lineage, children) for lineage, children in nodes if len(children) >= 2]


def node_paths(nodes: Sequence[Node], classes: Sequence[str], paths: Mapping[str, tuple[str, ...]]) -> torch.Tensor:
    """The 0/1 matrix (children of all nodes, labels): 1 where a node's child is on a label's path.

    ``paths`` gives each label's full lineage, ending with the label
    (:meth:`echoengine.taxonomy.Taxonomy.full_lineage`).
    """
    rows = []
    for lineage, children in nodes:
        depth = len(lineage)
        for child in children:
            rows.append([float(paths[label][:depth + 1] == (*lineage, child)) for label in classes])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(classes))


class NodeModels(nn.Module):
    """One model per internal node; forward gives each label's log-probability (the model's "logits").

    Parameters
    ----------
    models : sequence of nn.Module
        The node models, each (inputs) -> logits over its children.
    paths : torch.Tensor, shape (children of all nodes, labels)
        :func:`node_paths` of the nodes, in the models' order.

    Examples
    --------
    >>> a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    >>> nodes = [((), ["A", "B"]), (("A",), ["a1", "a2"])]
    >>> lineages = {"a1": ("A", "a1"), "a2": ("A", "a2"), "b1": ("B", "b1")}
    >>> model = NodeModels([a, b], node_paths(nodes, ["a1", "a2", "b1"], lineages))
    >>> x = torch.rand(3, 4)
    >>> probs = torch.softmax(model(x), 1)
    >>> expected = torch.softmax(a(x), 1)[:, :1] * torch.softmax(b(x), 1)
    >>> bool(torch.allclose(probs[:, :2], expected, atol=1e-6)), bool(torch.allclose(probs.sum(1), torch.ones(3)))
    (True, True)
    """

    def __init__(self, models: Sequence[nn.Module], paths: torch.Tensor) -> None:
        super().__init__()
        self.nodes = nn.ModuleList(models)
        self.register_buffer("paths", paths.float(), persistent=False)

    def _combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.log_softmax(out, dim=-1) for out in outputs], dim=-1) @ self.paths

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._combine([model(inputs) for model in self.nodes])

    def window_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Each window's label log-probabilities (batch, windows, labels), for nodes with ``window_logits``."""
        return self._combine([model.window_logits(inputs) for model in self.nodes])

    @property
    def mean(self) -> torch.Tensor:
        """The first node's embedding mean (embedding kinds): its size is the input's."""
        return self.nodes[0].mean

    @property
    def backbone(self) -> nn.Module:
        """The first node's backbone (what takes the inputs)."""
        return self.nodes[0].backbone


def rank_masks(memberships: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """For each rank, the (names, labels) 0/1 mask of which labels lie under each name.

    ``memberships`` are :meth:`echoengine.taxonomy.Taxonomy.membership` of each rank.

    >>> rank_masks([np.array([0, 0, 1])])[0].int().tolist()
    [[1, 1, 0], [0, 0, 1]]
    """
    masks = []
    for members in memberships:
        members = torch.as_tensor(np.asarray(members), dtype=torch.long)
        masks.append(nn.functional.one_hot(members, int(members.max()) + 1).T.float())
    return masks


def rank_nll(logits: torch.Tensor, targets: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per row, the sum over ranks of the negative log of the rank's marginal probability of the target.

    A rank's log marginal is the logsumexp of the labels' log-softmax over
    the labels under each name; targets are label indices (n,) or label
    probability rows (n, labels), mapped to each rank by its mask.

    >>> logits, masks = torch.tensor([[0.0, 0.0, 0.0]]), rank_masks([np.array([0, 0, 1])])
    >>> round(float(rank_nll(logits, torch.tensor([0]), masks)[0]), 4)  # -log(2/3)
    0.4055
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    rows = targets if targets.ndim == 2 else nn.functional.one_hot(targets.long(), logits.shape[-1])
    rows = rows.to(log_probs.dtype)
    total = torch.zeros(len(logits), dtype=log_probs.dtype, device=logits.device)
    for mask in masks:
        mask = mask.to(device=logits.device, dtype=log_probs.dtype)
        log_mask = torch.where(mask > 0, torch.zeros_like(mask), torch.full_like(mask, -torch.inf))
        marginal = torch.logsumexp(log_probs[:, None, :] + log_mask, dim=-1)  # (n, names)
        total = total - ((rows @ mask.T) * marginal).sum(-1)
    return total


class JointLoss(nn.Module):
    """Cross-entropy over the labels plus, at every rank above them, the NLL of the rank's marginal.

    The label term is ``torch.nn.CrossEntropyLoss(weight, label_smoothing)``
    (what a flat model trains on); the rank terms are weighted by each row's
    class weight, normalised as the label term is (by the sum of the weights
    for class indices, by the number of rows for probability rows), and
    not smoothed.

    Examples
    --------
    >>> loss = JointLoss(rank_masks([np.array([0, 0, 1])]))
    >>> logits = torch.tensor([[0.0, 0.0, 0.0]])
    >>> round(float(loss(logits, torch.tensor([[1.0, 0.0, 0.0]]))), 4)  # -log(1/3) - log(2/3)
    1.5041
    """

    def __init__(self, masks: Sequence[torch.Tensor], *, weight: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.masks = list(masks)
        self.weight = weight
        self.label_loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ranks = rank_nll(logits, targets, self.masks)
        if self.weight is None:
            return self.label_loss(logits, targets) + ranks.mean()
        rows = targets if targets.ndim == 2 else nn.functional.one_hot(targets.long(), logits.shape[-1]).float()
        weights = rows.to(self.weight.dtype) @ self.weight
        # normalised as the label term: by the weights of class indices, by the rows of probability targets
        total = weights.sum().clamp_min(1e-12) if targets.ndim == 1 else len(targets)
        return self.label_loss(logits, targets) + (weights * ranks).sum() / total
