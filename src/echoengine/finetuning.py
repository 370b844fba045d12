"""Fine-tuning a pretrained network (BirdNET): the linear probe it starts from, and when it pays.

``echoengine train --backbone birdnet --finetune`` first fits a head on the
frozen network's cached embeddings (linear probing), then trains the whole
network from it. On few recordings it loses to the frozen embeddings
(``bench/finetune_study.py``; the README's "Fine-tuning BirdNET"), which
:func:`finetune_advice` tells the user before the run starts.

Examples
--------
>>> print(finetune_advice(650, 49, cpu_hours=4.2))  # doctest: +ELLIPSIS
fine-tuning BirdNET on 13.3 clips per class, more than it was measured on (6.6, ...; on this CPU about 4.2 h
"""

from __future__ import annotations

import copy

import pandas as pd
import torch
from torch import nn

from echoengine.cache import feature_cache
from echoengine.config import EchoConfig
from echoengine.headfit import train_linear_head
from echoengine.models import EmbeddingClassifier

__all__ = ["FINETUNE_LOST_UP_TO", "finetune_advice", "probe_linear", "raw_embedding_head"]

#: Fine-tuning BirdNET lost to frozen embeddings at every training size measured, up to this many clips per
#: class (the ESC-50 subset's folds: bench/finetune_study.py on a GPU against bench/small_data.py's default).
FINETUNE_LOST_UP_TO = 6.6


def finetune_advice(clips: int, classes: int, *, cpu_hours: float | None = None) -> str:
    """What ``--finetune`` says before BirdNET is fine-tuned on ``clips`` training clips: frozen embeddings or a
    comparison by ``cv``, and the hours it takes on the CPU.

    Examples
    --------
    >>> finetune_advice(300, 50).endswith("--embedder birdnet without --finetune is recommended")
    True
    """
    per_class = clips / max(classes, 1)
    if per_class <= FINETUNE_LOST_UP_TO:
        say = (f"fine-tuning BirdNET on {per_class:.1f} clips per class: at up to {FINETUNE_LOST_UP_TO} per class "
               "it lost to frozen embeddings at every size measured (README, 'Fine-tuning BirdNET'); "
               "--embedder birdnet without --finetune is recommended")
    else:
        say = (f"fine-tuning BirdNET on {per_class:.1f} clips per class, more than it was measured on "
               f"({FINETUNE_LOST_UP_TO}, where frozen embeddings won): compare it with --embedder birdnet by cv")
    if cpu_hours is None:
        return say
    return say + (f"; on this CPU about {cpu_hours:.1f} h" if cpu_hours >= 1 else
                  f"; on this CPU about {max(1, round(cpu_hours * 60))} min")


def raw_embedding_head(probe: EmbeddingClassifier) -> nn.Module:
    """A copy of the probe's head for raw embeddings: its standardisation folded into the first linear layer."""
    head = copy.deepcopy(probe.head)
    first = next(m for m in head.modules() if isinstance(m, nn.Linear))
    with torch.no_grad():  # head((x - mean) / std) == head'(x)
        first.bias -= first.weight @ (probe.mean / probe.std)
        first.weight /= probe.std
    return head


def probe_linear(train_table: pd.DataFrame, classes: list[str], config: EchoConfig, *, log) -> nn.Module:
    """The linear head fitted by L-BFGS on the frozen embeddings of the training files, standardisation folded in."""
    probe_config = config.replace(model={"embedder": config.model.kind.probe_embedder,
                                         "backbone": config.model.backbone}, train={"probe_epochs": 0})
    probe, fit = train_linear_head(train_table, classes, probe_config, cache=feature_cache(config))
    log(f"linear probing: L-BFGS head on frozen BirdNET embeddings ({fit.describe()})")
    return raw_embedding_head(probe)
