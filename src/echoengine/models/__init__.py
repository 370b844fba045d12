"""Models: CNN backbones by name and the heads that classify their features.

Examples
--------
>>> import torch
>>> from echoengine.config import ModelConfig
>>> model = build_model(ModelConfig(backbone="small_cnn"), n_classes=4)
>>> model(torch.rand(2, 3, 260, 260)).shape
torch.Size([2, 4])
"""

from echoengine.models.backbones import BACKBONES, build_backbone
from echoengine.models.classifier import Classifier, EmbeddingClassifier, build_model
from echoengine.models.heads import HEADS, EchoDenseHead, LinearHead

__all__ = [
    "BACKBONES",
    "HEADS",
    "Classifier",
    "EchoDenseHead",
    "EmbeddingClassifier",
    "LinearHead",
    "build_backbone",
    "build_model",
]
