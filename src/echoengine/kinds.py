"""The registry of model kinds: what differs between an image CNN, a head on embeddings and BirdNET fine-tuned.

Each kind is one registered :class:`ModelKind`: how a ``[model]`` config
selects it (a backbone name, or an embedder name), which heads it allows,
what its model takes (spectrogram images, window embeddings or raw
waveforms: the scorer's input too), and the functions that build its model,
its dataset, its embedder and its ONNX serving module. The config's
validation, the model builder, the datasets, the scorer, training and the
exporter ask the registry (:func:`model_kind`, or ``ModelConfig.kind``)
instead of testing names, so adding a kind is one :func:`register` call
here, naming the functions that implement it.

Those functions are named as ``"module:attribute"`` (:class:`Target`) and
imported when first called: this module sits just above the config in the
package's layering, so it imports neither torch nor the modules below it
(``tests/test_architecture.py`` checks that every target lies below it).

Examples
--------
>>> from echoengine.config import ModelConfig
>>> model_kind(ModelConfig()).name, ModelConfig(embedder="cnn:/bundles/calls").kind.name
('cnn', 'cnn-embeddings')
>>> ModelConfig(backbone="birdnet").kind.input
'waveforms'
>>> from types import SimpleNamespace
>>> model_kind(SimpleNamespace(embedder="yamnet", backbone="small_cnn"))
Traceback (most recent call last):
...
echoengine.errors.ConfigError: model.embedder must be '', 'birdnet', 'birdnet-tflite' or 'cnn:/path/to/bundle', ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from echoengine.errors import ConfigError, EchoError
from echoengine.input_config import require

__all__ = [
    "BIRDNET",
    "BIRDNET_EMBEDDINGS",
    "BIRDNET_TFLITE_EMBEDDINGS",
    "BIRDNET_WINDOW_SECONDS",
    "CNN",
    "CNN_EMBEDDINGS",
    "EMBEDDINGS",
    "IMAGES",
    "INPUTS",
    "KINDS",
    "MODEL_BATCH",
    "TIMM_BACKBONES",
    "WAVEFORMS",
    "ModelKind",
    "Target",
    "backbone_kind",
    "check_model",
    "embedder_kind",
    "find_kind",
    "model_kind",
    "register",
    "uses_birdnet",
]

#: What a kind's model takes, and so what its dataset yields and its scorer prepares from windows of audio.
IMAGES, EMBEDDINGS, WAVEFORMS = "images", "embeddings", "waveforms"
#: Images a CNN scores at a time on a CPU (fastest in small batches, activations staying in cache: small_cnn
#: 8 ms per image in batches of 4 against 14 in batches of 16, EfficientNetV2-B0 10 against 20, 2 cores).
MODEL_BATCH = 4
INPUTS = (IMAGES, EMBEDDINGS, WAVEFORMS)
#: BirdNET V2.4's window: the windows its kinds score recordings in.
BIRDNET_WINDOW_SECONDS = 3.0

#: echoengine backbone name -> timm model name (each checked against timm's own registry by the tests).
TIMM_BACKBONES = {
    "efficientnetv2_b0": "tf_efficientnetv2_b0",  # the Echo pipeline's backbone
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b3": "efficientnet_b3",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "inception_v3": "inception_v3",
    "mobilenetv3_large_100": "mobilenetv3_large_100",
}


class _ModelSection(Protocol):  # what the registry reads of a ModelConfig (the config imports this module)
    backbone: str
    head: str
    embedder: str
    pretrained: bool


@dataclass(frozen=True)
class Target:
    """A function (or class) named by module and attribute, imported when first called.

    Examples
    --------
    >>> Target("math:hypot")(3, 4)
    5.0
    """

    path: str

    def resolve(self) -> Callable[..., Any]:
        """The named object (its module imported now if it was not yet)."""
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: how a config selects it, what it allows, and the functions that implement it.

    Parameters
    ----------
    name : str
        The kind's name in the registry (:data:`KINDS`).
    label : str
        How messages name it: "model.head must be ... on {label}".
    input : str
        What its model takes: :data:`IMAGES` (batch, channels, height,
        width), :data:`EMBEDDINGS` (batch, windows, size) or
        :data:`WAVEFORMS` (batch, clip samples).
    heads : tuple of str
        The heads it allows.
    default_head : str
        The head that ``head = "auto"`` names.
    builder : Target
        ``(ModelConfig, n_classes) -> torch.nn.Module``.
    dataset : Target
        ``(table, classes, config, *, train, cache, progress, boxes) -> Dataset``:
        one-hot items, or multi-label items of annotated recordings with ``boxes``.
    backbones : tuple of str
        Backbone names that select it when no embedder is set.
    embedder : str
        The embedder name that selects it; one ending in ``":"`` is a prefix
        (``"cnn:"`` selects ``"cnn:/path/to/bundle"``).
    embedder_hint : str
        How messages write its embedder (default: ``embedder``).
    multilabel : bool
        Whether it trains on annotated boxes (``model.multilabel``).
    birdnet : bool
        Whether BirdNET computes its inputs (``model.birdnet_blocks`` and ``birdnet_speeds`` matter).
    sample_rate : int
        The audio rate its backbone needs (checked by the config); 0: any.
    probe_embedder : str
        For a pretrained network fine-tuned with ``--finetune``: the embedder
        of its frozen features, on which the head is probed first; empty: the
        kind is not fine-tuned that way.
    make_embedder : Target, optional
        ``(embedder name, BirdNET blocks, *, precision, speeds) -> embedder``
        for embedder kinds (``precision``: the torch BirdNET's front end;
        ``speeds``: its playback-speed views).
    embedding_size : Target, optional
        ``(embedder name, BirdNET blocks, speeds) -> int``, without loading the embedder.
    serving : Target, optional
        ``(bundle) -> torch.nn.Module`` from raw clips (batch, clip samples)
        to logits, put inside the waveform-in ONNX graph; None: the graph
        holds the head alone and takes embeddings.
    window_seconds : float
        The windows its models score recordings in (``predict``, ``detect``,
        the server, the exported graph); 0: the clip length. BirdNET's kinds
        score BirdNET's own 3 s windows: each window is a clip of one window,
        whose logits the head gives (a clip's logits are the mean of its
        windows'), so no window is scored twice or mostly padding.
    """

    name: str
    label: str
    input: str
    heads: tuple[str, ...]
    default_head: str
    builder: Target
    dataset: Target
    backbones: tuple[str, ...] = ()
    embedder: str = ""
    embedder_hint: str = ""
    multilabel: bool = True
    birdnet: bool = False
    sample_rate: int = 0
    probe_embedder: str = ""
    make_embedder: Target | None = None
    embedding_size: Target | None = None
    serving: Target | None = None
    window_seconds: float = 0.0

    @property
    def finetunes(self) -> bool:
        """Whether ``--finetune`` applies: a pretrained network, frozen unless fine-tuned, probed first."""
        return bool(self.probe_embedder)

    def selected_by(self, *, embedder: str = "", backbone: str = "") -> bool:
        """Whether a config with this embedder (or, with none, this backbone) is of this kind.

        Examples
        --------
        >>> KINDS["cnn-embeddings"].selected_by(embedder="cnn:/bundles/calls", backbone="small_cnn")
        True
        """
        if not embedder:
            return not self.embedder and backbone in self.backbones
        if self.embedder.endswith(":"):
            return embedder.startswith(self.embedder)
        return embedder == self.embedder


#: The registered kinds by name, in registration order.
KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind) -> ModelKind:
    """Add a kind to :data:`KINDS`, checking that nothing else selects the same configs.

    Raises
    ------
    ValueError
        A kind of that name exists, or the kind is inconsistent (a programming error, not bad input).

    Examples
    --------
    >>> import dataclasses
    >>> register(dataclasses.replace(KINDS["cnn"], name="more", backbones=("resnet50",)))
    Traceback (most recent call last):
    ...
    ValueError: model kind 'more': already selected by another kind: resnet50
    """
    problems = [
        f"the name {kind.name!r} is taken" if kind.name in KINDS else "",
        f"input {kind.input!r} is not one of {', '.join(INPUTS)}" if kind.input not in INPUTS else "",
        f"default head {kind.default_head!r} is not among its heads" if kind.default_head not in kind.heads else "",
        "it needs backbones or an embedder, not both" if bool(kind.backbones) == bool(kind.embedder) else "",
        "an embedder kind needs make_embedder and embedding_size"
        if kind.embedder and not (kind.make_embedder and kind.embedding_size) else "",
    ]
    taken = [name for name in kind.backbones if backbone_kind(name)]
    taken += [kind.embedder] if any(_overlap(kind.embedder, k.embedder) for k in KINDS.values()) else []
    problems.append(f"already selected by another kind: {', '.join(taken)}" if taken else "")
    if any(problems):
        raise ValueError(f"model kind {kind.name!r}: {'; '.join(p for p in problems if p)}")
    KINDS[kind.name] = kind
    return kind


def find_kind(*, embedder: str = "", backbone: str = "") -> ModelKind | None:
    """The kind that an embedder name (or, with none, a backbone name) selects; None if no kind does.

    Examples
    --------
    >>> find_kind(embedder="birdnet-tflite").name, find_kind(backbone="resnet50").name, find_kind(backbone="vgg")
    ('birdnet-tflite-embeddings', 'cnn', None)
    """
    return next((k for k in KINDS.values() if k.selected_by(embedder=embedder, backbone=backbone)), None)


def backbone_kind(name: str) -> ModelKind | None:
    """The kind a backbone name selects when no embedder is set; None for an unknown name.

    Examples
    --------
    >>> backbone_kind("birdnet").sample_rate
    48000
    """
    return find_kind(backbone=name)


def embedder_kind(name: str) -> ModelKind:
    """The kind an embedder name selects, or an EchoError listing the known embedders.

    Examples
    --------
    >>> embedder_kind("birdnet").serving
    Target(path='echoengine.exporting:BirdNETEmbeddingHead')
    """
    kind = find_kind(embedder=name) if name else None
    if kind is None:
        raise EchoError(f"unknown embedder {name!r}; known: {', '.join(_embedder_hints())}")
    return kind


def model_kind(model: _ModelSection) -> ModelKind:
    """The kind of a ``[model]`` section: by its embedder when set, else by its backbone.

    Raises
    ------
    ConfigError
        Neither selects a registered kind; the message lists what would.
    """
    kind = find_kind(embedder=model.embedder, backbone=model.backbone)
    if kind is None and model.embedder:
        raise ConfigError(f"model.embedder must be {_quoted(['', *_embedder_hints()])}, got {model.embedder!r}")
    if kind is None:
        raise ConfigError(f"model.backbone must be one of {', '.join(_backbones())}, got {model.backbone!r}")
    return kind


def check_model(model: _ModelSection) -> ModelKind:
    """Check the ``[model]`` values that the kinds decide (backbone, head, embedder, pretrained); return the kind.

    Raises
    ------
    ConfigError
        One line naming the key, what it got and what is allowed.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> check_model(SimpleNamespace(backbone="birdnet", head="auto", embedder="", pretrained=False)).input
    'waveforms'
    >>> check_model(SimpleNamespace(backbone="small_cnn", head="echo", embedder="birdnet", pretrained=False))
    Traceback (most recent call last):
    ...
    echoengine.errors.ConfigError: model.head must be 'linear', 'mlp' or 'attention' on an embedder, got 'echo'
    """
    backbones, heads = _backbones(), ("auto", *dict.fromkeys(h for k in KINDS.values() for h in k.heads))
    require(model.backbone in backbones, f"model.backbone must be one of {', '.join(backbones)}, "
             f"got {model.backbone!r}")
    require(model.head in heads, f"model.head must be {_quoted(heads)}, got {model.head!r}")
    kind = model_kind(model)
    head = kind.default_head if model.head == "auto" else model.head
    require(head in kind.heads, f"model.head must be {_quoted(kind.heads)} on {kind.label}, got {model.head!r}")
    require(not (kind.embedder and model.pretrained),
             f"model.pretrained is for CNN backbones; the {model.embedder} embedder is pretrained already")
    return kind


def uses_birdnet(*, embedder: str, backbone: str) -> bool:
    """Whether BirdNET computes inputs for this embedder or this backbone (names not checked: unknown is False).

    Examples
    --------
    >>> uses_birdnet(embedder="", backbone="birdnet"), uses_birdnet(embedder="cnn:x", backbone="small_cnn")
    (True, False)
    """
    named = [find_kind(embedder=embedder) if embedder else None, backbone_kind(backbone)]
    return any(kind is not None and kind.birdnet for kind in named)


def _overlap(one: str, other: str) -> bool:
    """Whether two embedder selectors (names, or prefixes ending in ":") select a common name."""
    if not (one and other):
        return False
    if (one.endswith(":") and other.startswith(one)) or (other.endswith(":") and one.startswith(other)):
        return True
    return one == other


def _quoted(names: Sequence[str]) -> str:
    """``'a', 'b' or 'c'``."""
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _backbones() -> list[str]:
    return [name for kind in KINDS.values() for name in kind.backbones]


def _embedder_hints() -> list[str]:
    return [kind.embedder_hint or kind.embedder for kind in KINDS.values() if kind.embedder]


def _embedding_kind(name: str, embedder: str, *, make: str, size: str, birdnet: bool, serving: str | None = None,
                    hint: str = "") -> ModelKind:
    """A head trained on the window embeddings of a frozen embedder (BirdNET's: scored in its 3 s windows)."""
    return ModelKind(
        name=name, label="an embedder", input=EMBEDDINGS, heads=("linear", "mlp", "attention"), default_head="linear",
        builder=Target("echoengine.models.classifier:build_embedding_model"),
        dataset=Target("echoengine.embeddings:embedding_dataset"), embedder=embedder, embedder_hint=hint,
        birdnet=birdnet, make_embedder=Target(make), embedding_size=Target(size),
        serving=Target(serving) if serving else None, window_seconds=BIRDNET_WINDOW_SECONDS if birdnet else 0.0,
    )


CNN = register(ModelKind(
    name="cnn", label="a CNN backbone", input=IMAGES, heads=("echo", "linear", "mlp", "attention"),
    default_head="echo", backbones=(*TIMM_BACKBONES, "small_cnn"),
    builder=Target("echoengine.models.classifier:build_image_model"),
    dataset=Target("echoengine.dataset:image_dataset"), serving=Target("echoengine.exporting:image_clip_model"),
))
BIRDNET = register(ModelKind(
    name="birdnet", label="the fine-tuned birdnet backbone", input=WAVEFORMS, heads=("echo", "linear", "mlp"),
    default_head="echo", backbones=("birdnet",), multilabel=False, birdnet=True, sample_rate=48000,
    probe_embedder="birdnet", builder=Target("echoengine.models.classifier:build_birdnet_model"),
    dataset=Target("echoengine.dataset:waveform_dataset"), serving=Target("echoengine.exporting:waveform_clip_model"),
    window_seconds=BIRDNET_WINDOW_SECONDS,
))
BIRDNET_EMBEDDINGS = register(_embedding_kind(
    "birdnet-embeddings", "birdnet", make="echoengine.embeddings:birdnet_torch_embedder",
    size="echoengine.models.embedders:birdnet_embedding_size", birdnet=True,
    serving="echoengine.exporting:BirdNETEmbeddingHead",
))
BIRDNET_TFLITE_EMBEDDINGS = register(_embedding_kind(
    "birdnet-tflite-embeddings", "birdnet-tflite", make="echoengine.embeddings:birdnet_tflite_embedder",
    size="echoengine.models.embedders:birdnet_embedding_size", birdnet=True,
))
CNN_EMBEDDINGS = register(_embedding_kind(
    "cnn-embeddings", "cnn:", hint="cnn:/path/to/bundle", make="echoengine.embeddings:cnn_embedder",
    size="echoengine.models.embedders:cnn_embedding_size", birdnet=False,
))
