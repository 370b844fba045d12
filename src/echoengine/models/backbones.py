"""CNN backbones by name: timm's, and a small one trained from scratch on a CPU.

Every backbone maps images (batch, 3, height, width) to pooled features
(batch, num_features). timm's ImageNet weights are optional: they are loaded
from a local file when one is given, else downloaded when the network allows;
offline without a file, building fails with a message saying how to pass one,
never silently falling back to random weights.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from echoengine.errors import ConfigError, EchoError
from echoengine.kinds import TIMM_BACKBONES

__all__ = ["BACKBONES", "TIMM_BACKBONES", "SmallCNN", "build_backbone"]

class SmallCNN(nn.Module):
    """A few conv blocks with PReLU, sized for training on a CPU.

    Each block: 3x3 conv, batch norm, PReLU, 2x2 max pool; then global
    average pooling.

    Examples
    --------
    >>> SmallCNN()(torch.rand(2, 3, 260, 260)).shape
    torch.Size([2, 128])
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in channels:
            layers += [
                nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.PReLU(width),
                nn.MaxPool2d(2),
            ]
            in_channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(images)).flatten(1)


def _online(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _timm_backbone(name: str, *, pretrained: bool, weights: str) -> nn.Module:
    import timm

    timm_name = TIMM_BACKBONES[name]
    if pretrained and weights:
        path = Path(weights)
        if not path.is_file():
            raise EchoError(f"{path}: pretrained weights file not found (model.weights)")
        return timm.create_model(timm_name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(path)})
    if pretrained and not _online():
        raise EchoError(
            f"cannot download the ImageNet weights of {name} ({timm_name}): no network. Download them where "
            f"there is one (timm.create_model('{timm_name}', pretrained=True) caches them), then pass the file "
            "with model.weights = '/path/to/model.safetensors' (or --weights), or train with pretrained = false"
        )
    try:
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=0)
    except Exception as exc:  # hub errors have many types
        if not pretrained:
            raise
        raise EchoError(f"could not load the pretrained weights of {name} ({timm_name}): {exc}; "
                        "pass a local file with model.weights") from None


#: Backbone builders by echoengine name.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{name: (lambda n: lambda **kw: _timm_backbone(n, **kw))(name) for name in TIMM_BACKBONES},
    "small_cnn": lambda **_: SmallCNN(),
}


def build_backbone(name: str, *, pretrained: bool = False, weights: str = "") -> nn.Module:
    """A backbone by name; its ``num_features`` attribute is the size of its pooled output.

    Raises
    ------
    ConfigError
        Unknown name.
    EchoError
        Pretrained weights asked for but not available.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    if name == "small_cnn" and pretrained:
        raise ConfigError("small_cnn has no pretrained weights: set model.pretrained = false")
    backbone = BACKBONES[name](pretrained=pretrained, weights=weights)
    # timm models with a layer after pooling (MobileNetV3) output head_hidden_size features
    backbone.num_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return backbone
