"""A backbone and a head as one model: images in, logits out."""

from __future__ import annotations

import torch
from torch import nn

from echoengine.config import ModelConfig
from echoengine.models.backbones import build_backbone
from echoengine.models.heads import HEADS

__all__ = ["Classifier", "build_model"]


class Classifier(nn.Module):
    """``head(backbone(images))``, with the pooled features available for embedding.

    Examples
    --------
    >>> from echoengine.models.backbones import SmallCNN
    >>> from echoengine.models.heads import LinearHead
    >>> model = Classifier(SmallCNN(), LinearHead(128, 3))
    >>> model.features(torch.rand(1, 3, 64, 64)).shape, model(torch.rand(1, 3, 64, 64)).shape
    (torch.Size([1, 128]), torch.Size([1, 3]))
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (batch, num_features)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def build_model(config: ModelConfig, n_classes: int) -> Classifier:
    """The model a ``[model]`` config section describes, for ``n_classes`` outputs."""
    backbone = build_backbone(config.backbone, pretrained=config.pretrained, weights=config.weights)
    head = HEADS[config.head](backbone.num_features, n_classes, dropout=config.dropout)
    return Classifier(backbone, head)
