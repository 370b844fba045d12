"""Classification heads over a backbone's pooled features.

Examples
--------
>>> import torch
>>> head = EchoDenseHead(1280, n_classes=10)
>>> head.eval()(torch.rand(2, 1280)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from torch import nn

__all__ = ["HEADS", "EchoDenseHead", "LinearHead", "MLPHead"]


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


#: Heads by the name used in ``[model] head``.
HEADS: dict[str, type[nn.Module]] = {"echo": EchoDenseHead, "linear": LinearHead, "mlp": MLPHead}
