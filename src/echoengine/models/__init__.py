"""Models: CNN backbones by name and the heads that classify their features.

Examples
--------
>>> import torch
>>> from echoengine.config import ModelConfig
>>> from echoengine.models import build_model
>>> model = build_model(ModelConfig(backbone="small_cnn"), n_classes=4)
>>> model(torch.rand(2, 3, 260, 260)).shape
torch.Size([2, 4])
"""

from __future__ import annotations

import importlib

#: Where each public name lives. Imported on first use (PEP 562), so that a
#: torch-free module of this package (``birdnet_file``: BirdNET's files, read
#: by ``species`` and the location filter) does not import torch with it.
_WHERE = {
    "BACKBONES": "backbones",
    "build_backbone": "backbones",
    "Classifier": "classifier",
    "EmbeddingClassifier": "classifier",
    "build_model": "classifier",
    "HEADS": "heads",
    "EchoDenseHead": "heads",
    "LinearHead": "heads",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
