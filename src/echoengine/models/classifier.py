"""A backbone and a head as one model: images in, logits out."""

from __future__ import annotations

import torch
from torch import nn

from echoengine.config import ModelConfig
from echoengine.models.backbones import build_backbone
from echoengine.models.heads import HEADS, AttentionHead

__all__ = ["Classifier", "EmbeddingClassifier", "build_birdnet_model", "build_embedding_model", "build_image_model",
           "build_model"]


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
        self.attention = isinstance(head, AttentionHead)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (batch, num_features)."""
        return self.backbone(images)

    def time_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map averaged over frequency: (batch, num_features, time steps).

        Images lay time along their height and mel bands along their width.
        """
        body = getattr(self.backbone, "forward_features", None) or self.backbone.features
        return body(images).mean(dim=3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.attention:
            return self.head(self.time_features(images))
        return self.head(self.backbone(images))


class EmbeddingClassifier(nn.Module):
    """A head over the window embeddings of a frozen embedder, pooled per clip.

    Input: (batch, windows, embedding size). The embeddings are standardised
    with the training set's mean and standard deviation (buffers, saved with
    the weights), each window gets logits from the head, and a clip's logits
    are the mean (or max) over its windows.

    Examples
    --------
    >>> from echoengine.models.heads import LinearHead
    >>> model = EmbeddingClassifier(LinearHead(8, 3), embedding_size=8, pooling="mean")
    >>> model(torch.rand(2, 4, 8)).shape, model.window_logits(torch.rand(2, 4, 8)).shape
    (torch.Size([2, 3]), torch.Size([2, 4, 3]))
    """

    def __init__(self, head: nn.Module, *, embedding_size: int, pooling: str = "mean") -> None:
        super().__init__()
        self.head = head
        self.pooling = pooling
        self.register_buffer("mean", torch.zeros(embedding_size))
        self.register_buffer("std", torch.ones(embedding_size))
        self.backbone = nn.Identity()  # nothing to train or freeze: the embedder is outside

    def set_standardisation(self, embeddings: torch.Tensor) -> None:
        """Standardise with the statistics of these (n, embedding size) training embeddings."""
        self.mean.copy_(embeddings.mean(dim=0))
        self.std.copy_(embeddings.std(dim=0).clamp_min(1e-6))

    def window_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits of every window: (batch, windows, n_classes)."""
        batch, windows, size = embeddings.shape
        standard = (embeddings - self.mean) / self.std
        if isinstance(self.head, AttentionHead):
            return self.head.step_logits(standard.transpose(1, 2))
        return self.head(standard.reshape(batch * windows, size)).reshape(batch, windows, -1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if isinstance(self.head, AttentionHead):  # attention over the clip's windows
            return self.head(((embeddings - self.mean) / self.std).transpose(1, 2))
        logits = self.window_logits(embeddings)
        return logits.amax(dim=1) if self.pooling == "max" else logits.mean(dim=1)


def build_model(config: ModelConfig, n_classes: int) -> nn.Module:
    """The model a ``[model]`` config section describes, for ``n_classes`` outputs: its kind's builder.

    Examples
    --------
    >>> build_model(ModelConfig(backbone="small_cnn"), n_classes=3).eval()(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 3])
    """
    return config.kind.builder(config, n_classes)


def _head(config: ModelConfig, in_features: int, n_classes: int) -> nn.Module:
    return HEADS[config.head_name](in_features, n_classes, dropout=config.dropout, hidden_size=config.hidden_size)


def build_image_model(config: ModelConfig, n_classes: int) -> Classifier:
    """A CNN backbone and a head on spectrogram images (the ``cnn`` kind).

    Examples
    --------
    >>> build_image_model(ModelConfig(backbone="small_cnn", head="linear"), 4).head[-1]
    Linear(in_features=128, out_features=4, bias=True)
    """
    backbone = build_backbone(config.backbone, pretrained=config.pretrained, weights=config.weights)
    return Classifier(backbone, _head(config, backbone.num_features, n_classes))


def build_embedding_model(config: ModelConfig, n_classes: int) -> EmbeddingClassifier:
    """A head on the window embeddings of ``config.embedder`` (the embedder kinds).

    Examples
    --------
    >>> model = build_embedding_model(ModelConfig(embedder="birdnet-tflite", birdnet_blocks=()), 4)
    >>> model(torch.rand(2, 3, 1024)).shape  # 2 clips of 3 windows of BirdNET's 1024-d embedding
    torch.Size([2, 4])
    """
    size = config.kind.embedding_size(config.embedder, config.birdnet_blocks, config.birdnet_speeds)
    return EmbeddingClassifier(_head(config, size, n_classes), embedding_size=size, pooling=config.pooling)


def build_birdnet_model(config: ModelConfig, n_classes: int) -> nn.Module:
    """BirdNET V2.4 on raw 48 kHz audio and a head, for fine-tuning (the ``birdnet`` kind)."""
    from echoengine.models.birdnet_torch import BirdNETClassifier
    from echoengine.models.embedders import feature_size

    head = _head(config, feature_size(config.birdnet_blocks) * len(config.birdnet_speeds), n_classes)
    return BirdNETClassifier(head, hop=round(config.embedding_hop * 48000), pooling=config.pooling,
                             trainable_blocks=config.trainable_blocks, blocks=config.birdnet_blocks,
                             precision=config.birdnet_precision, speeds=config.birdnet_speeds)
