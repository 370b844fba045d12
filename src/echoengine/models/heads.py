"""Classification heads over a backbone's pooled features.

Examples
--------
>>> import torch
>>> head = EchoDenseHead(1280, n_classes=10)
>>> head.eval()(torch.rand(2, 1280)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["HEADS", "AttentionHead", "EchoDenseHead", "LinearHead", "MLPHead"]


class EchoDenseHead(nn.Sequential):
    """The Echo pipeline's head: BN, dense 8N relu, BN, dense 4N relu, BN, dropout 0.5, dense N.

    Parameters
    ----------
    in_features : int
        Size of the pooled backbone features.
    n_classes : int
        N, the number of outputs (logits).
    dropout : float
        Dropout before the last layer (0.5 in the Echo pipeline).
    """

    def __init__(self, in_features: int, n_classes: int, *, dropout: float = 0.5, **_) -> None:
        super().__init__(
            nn.Flatten(),
            nn.BatchNorm1d(in_features),
            nn.Linear(in_features, 8 * n_classes),
            nn.ReLU(),
            nn.BatchNorm1d(8 * n_classes),
            nn.Linear(8 * n_classes, 4 * n_classes),
            nn.ReLU(),
            nn.BatchNorm1d(4 * n_classes),
            nn.Dropout(dropout),
            nn.Linear(4 * n_classes, n_classes),
        )


class LinearHead(nn.Sequential):
    """Dropout and one linear layer: the plain global-pooling head."""

    def __init__(self, in_features: int, n_classes: int, *, dropout: float = 0.0, **_) -> None:
        super().__init__(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_features, n_classes))


class MLPHead(nn.Sequential):
    """One hidden layer: dense ``hidden_size`` ReLU, dropout, dense N.

    Examples
    --------
    >>> import torch
    >>> MLPHead(1024, 5, hidden_size=64)(torch.rand(3, 1024)).shape
    torch.Size([3, 5])
    """

    def __init__(self, in_features: int, n_classes: int, *, dropout: float = 0.5, hidden_size: int = 512) -> None:
        super().__init__(nn.Flatten(), nn.Linear(in_features, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden_size, n_classes))


class AttentionHead(nn.Module):
    """Attention pooling over time, one attention per class (the RFCx / PANNs attention block).

    Input: a sequence of features (batch, in_features, steps), e.g. a CNN's
    feature map averaged over frequency, or the embeddings of a clip's
    windows. Each step gets class logits and class attention weights (a
    softmax over the steps, per class); a clip's logit for a class is the
    attention-weighted sum of its steps' logits, so a short call anywhere in
    the clip can carry it.

    Examples
    --------
    >>> head = AttentionHead(16, 3)
    >>> head(torch.rand(2, 16, 9)).shape, head.step_logits(torch.rand(2, 16, 9)).shape
    (torch.Size([2, 3]), torch.Size([2, 9, 3]))
    """

    def __init__(self, in_features: int, n_classes: int, *, dropout: float = 0.0, **_) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.attention = nn.Conv1d(in_features, n_classes, kernel_size=1)
        self.classify = nn.Conv1d(in_features, n_classes, kernel_size=1)

    def step_logits(self, sequence: torch.Tensor) -> torch.Tensor:
        """Logits of every step: (batch, steps, n_classes)."""
        return self.classify(self.dropout(sequence)).transpose(1, 2)

    def weights(self, sequence: torch.Tensor) -> torch.Tensor:
        """Attention weights (batch, n_classes, steps), summing to 1 over the steps."""
        return torch.softmax(torch.clamp(self.attention(self.dropout(sequence)), -10, 10), dim=-1)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        sequence = self.dropout(sequence)
        weights = torch.softmax(torch.clamp(self.attention(sequence), -10, 10), dim=-1)
        return (weights * self.classify(sequence)).sum(dim=-1)


#: Heads by the name used in ``[model] head``.
HEADS: dict[str, type[nn.Module]] = {"echo": EchoDenseHead, "linear": LinearHead, "mlp": MLPHead,
                                     "attention": AttentionHead}
