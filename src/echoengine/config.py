"""One configuration object for the whole data path, saved with everything it produces.

The defaults are those of the Project Echo pipeline: 48 kHz audio, 5 s clips, a mel spectrogram
with ``n_fft=2048``, ``hop_length=200``, 260 mel bands between 20 Hz and 13 kHz, power to dB
with ``top_db=80`` and a 260 x 260 x 3 image scaled to [0, 1].

Every section is a frozen dataclass that validates itself on construction, so
an invalid value fails where it is written, with a message naming the key.
:class:`EchoConfig` groups the sections, reads and writes TOML, and gives a
fingerprint of any sections, which keys the feature cache. A field whose
``metadata`` holds a ``"help"`` text is also a command-line option
(:mod:`echoengine.cli_options`): declared once, here.

Examples
--------
>>> from echoengine.config import EchoConfig
>>> cfg = EchoConfig()
>>> cfg.audio.sample_rate, cfg.frontend.n_mels, cfg.frontend.image_shape
(48000, 260, (3, 260, 260))
>>> cfg.replace(frontend={"n_mels": 128}).frontend.n_mels
128
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from echoengine.errors import ConfigError
from echoengine.files import write_text_atomic
from echoengine.input_config import (
    AUDIO_EXTENSIONS,
    MAX_BATCH_VALUES,
    MAX_SEED,
    MAX_STFT_VALUES,
    AudioConfig,
    AugmentConfig,
    DataConfig,
    FrontendConfig,
    ImageConfig,
    check_at_most,
    check_numbers,
    coerce_value,
    require,
)
from echoengine.kinds import EMBEDDINGS, IMAGES, ModelKind, backbone_kind, check_model, model_kind, uses_birdnet
from echoengine.taxonomy_config import TaxonomyConfig

__all__ = ["AUDIO_EXTENSIONS", "BIRDNET_BLOCKS", "BIRDNET_SPEEDS", "CONFIG_FILE", "MACHINE_SETTINGS", "AudioConfig",
           "AugmentConfig", "DataConfig", "EchoConfig", "FrontendConfig", "ImageConfig", "ModelConfig",
           "TaxonomyConfig", "TrainConfig"]

#: The name of a bundle's full config (see :mod:`echoengine.bundle`), here for the modules below it.
CONFIG_FILE = "echoengine.toml"
CONFIG_VERSION = 2  # 2: model.birdnet_blocks (a version-1 config means none)
#: BirdNET V2.4's blocks, in order, and the channels of each one's output (``model.birdnet_blocks``).
BIRDNET_BLOCKS = {"1-1": 36, "1-2": 36, "1-3": 36, "2-1": 72, "2-2": 72, "2-3": 72, "2-4": 72, "3-1": 108,
                  "3-2": 108, "3-3": 108, "3-4": 108, "3-5": 108, "4-1": 192, "4-2": 192, "4-3": 192, "4-4": 192}
#: The playback speeds of BirdNET's window views (``model.birdnet_speeds``): 1, or faster or slower by 2 to 4.
BIRDNET_SPEEDS = (0.25, 0.5, 1.0, 2.0, 3.0, 4.0)
_NONE = "none"  # how an unset optional value is written in TOML


@dataclass(frozen=True)
class ModelConfig:
    """The classifier: a backbone by name and a head.

    Parameters
    ----------
    backbone : str
        ``efficientnetv2_b0`` (the Echo pipeline's), ``efficientnet_b0``,
        ``efficientnet_b3``, ``resnet50``, ``inception_v3``,
        ``mobilenetv3_large_100`` (timm), ``small_cnn`` (from scratch, CPU-sized)
        or ``birdnet`` (BirdNET V2.4 on raw 48 kHz audio, for fine-tuning).
    head : str
        ``"auto"`` (``"linear"`` on an embedder, else ``"echo"``; see
        :attr:`head_name`), ``"echo"`` (the Echo dense head), ``"linear"``
        (global pooling + linear), ``"mlp"`` (one hidden layer of ``hidden_size``) or
        ``"attention"`` (per-class attention pooling over the time axis of the
        CNN's feature map, or over an embedder's windows).
    pretrained : bool
        Start from ImageNet weights (timm backbones).
    weights : str
        A local weights file for ``pretrained``; empty: download (needs a network).
    dropout : float
        Dropout before the last layer (0.5 in the Echo head).
    embedder : str
        Empty: a CNN on spectrogram images. ``"birdnet"`` (BirdNET V2.4 in
        torch), ``"birdnet-tflite"`` (the same through TFLite) or
        ``"cnn:/path/to/bundle"``: a frozen pretrained embedder turns each of
        its windows into an embedding and only a head is trained on them
        (``head`` then is ``"linear"`` or ``"mlp"``; ``backbone`` is unused).
    pooling : str
        How a clip's window logits become the clip's: ``"mean"`` or ``"max"``
        (embedding models).
    hidden_size : int
        Width of the ``"mlp"`` head's hidden layer; at most 16384.
    embedding_hop : float
        Seconds between the embedder windows of a clip; 0: the window length
        (no overlap), else 0.1 to 600 s. A 5 s clip gets BirdNET windows at 0
        and 3 s (the second padded) with 0, at 0, 1 and 2 s with 1. Also the
        window hop of the ``birdnet`` backbone.
    trainable_blocks : int
        With the ``birdnet`` backbone (BirdNET V2.4 fine-tuned on raw audio,
        CC BY-NC-SA 4.0): train only its last N blocks (0: all of it).
    birdnet_blocks : tuple of str
        BirdNET blocks (``"1-1"`` ... ``"4-4"``, :data:`BIRDNET_BLOCKS`) whose
        outputs, pooled over time and frequency (mean and max), join BirdNET's
        1024-d embedding (the ``birdnet`` embedders and backbone; unused by
        other models). The default, the last three blocks of stage 3, beat the
        embedding alone on every dataset measured (``bench/small_data.py``);
        ``[]``: the embedding alone, as in configs of version 1.
    birdnet_precision : str
        BirdNET's front end arithmetic: ``"float32"`` (2.6x faster, cosine 0.999996 to float64) or ``"float64"``.
    birdnet_speeds : tuple of float
        Playback speeds of :data:`BIRDNET_SPEEDS` at which each window is
        also embedded, the features side by side (the BirdNET embedder in
        torch and backbone): 2 plays it twice as fast, its content an octave up
        (:mod:`echoengine.models.birdnet_views`); ``[1.0]``: the window alone.
    multilabel : bool
        Several species per clip: sigmoid outputs trained with binary
        cross-entropy on clips labelled from annotated boxes (with
        ``head = "attention"``, per-class attention pooling over time).
    """

    backbone: str = field(default="efficientnetv2_b0", metadata={
        "help": "efficientnetv2_b0, efficientnet_b0, efficientnet_b3, resnet18, resnet50, inception_v3, "
                "mobilenetv3_large_100, small_cnn or birdnet (BirdNET V2.4 on raw audio, CC BY-NC-SA 4.0, --finetune)"})
    head: str = field(default="auto", metadata={
        "help": "auto: linear on an embedder, echo on a CNN; attention: per-class attention pooling over time "
                "(multi-label)", "choices": ("auto", "echo", "linear", "mlp", "attention")})
    pretrained: bool = field(default=False, metadata={"help": "start from ImageNet weights (timm backbones)"})
    weights: str = field(default="", metadata={
        "help": "a local weights file for --pretrained (offline; default: download)", "metavar": "FILE"})
    dropout: float = field(default=0.5, metadata={"help": "dropout before the last layer"})
    embedder: str = field(default="", metadata={
        "help": "train a head on a frozen pretrained embedder: birdnet (BirdNET V2.4, CC BY-NC-SA 4.0), "
                "birdnet-tflite or cnn:/path/to/bundle (default: none, a CNN on spectrograms)"})
    pooling: str = field(default="mean", metadata={
        "help": "pooling of window logits in a clip (embedders)", "choices": ("mean", "max")})
    hidden_size: int = field(default=512, metadata={"help": "hidden layer of the mlp head"})
    embedding_hop: float = field(default=0.0, metadata={
        "help": "hop between the embedder windows of a clip (0: the window, no overlap)", "metavar": "SECONDS"})
    trainable_blocks: int = field(default=0, metadata={
        "help": "with --backbone birdnet: fine-tune only its last N blocks (0: all)", "metavar": "N"})
    multilabel: bool = field(default=False, metadata={
        "help": "several species per clip: sigmoid outputs, binary cross-entropy, clips labelled from the boxes of "
                "annotation tables (Raven, Audacity, CSV) in DATA or --annotations"})
    birdnet_blocks: tuple[str, ...] = field(default=("3-3", "3-4", "3-5"), metadata={
        "help": "BirdNET blocks whose pooled outputs join its embedding, comma-separated (none: the embedding alone)",
        "metavar": "BLOCKS"})
    birdnet_precision: str = field(default="float32", metadata={
        "help": "arithmetic of BirdNET's front end (float64: the reference)", "choices": ("float32", "float64")})
    birdnet_speeds: tuple[float, ...] = field(default=(1.0,), metadata={
        "help": "playback speeds at which BirdNET also embeds each window, comma-separated (2: twice as fast, an "
                "octave up)", "metavar": "SPEEDS"})

    def __post_init__(self) -> None:
        s = "model"
        check_model(self)  # backbone, head, embedder and pretrained: what the model kinds allow
        require(self.pooling in ("mean", "max"), f"{s}.pooling must be 'mean' or 'max', got {self.pooling!r}")
        require(self.hidden_size >= 1, f"{s}.hidden_size must be >= 1, got {self.hidden_size}")
        check_at_most(s, "hidden_size", self.hidden_size, 16384, "units of the mlp head")
        unknown = sorted(str(block) for block in self.birdnet_blocks if not isinstance(block, str)
                         or block not in BIRDNET_BLOCKS)
        require(not unknown, f"{s}.birdnet_blocks: unknown block(s) {', '.join(unknown)}; known: "
                 f"{', '.join(BIRDNET_BLOCKS)}")
        # in block order, once each: the order of the features, whatever order they were named in
        object.__setattr__(self, "birdnet_blocks", tuple(b for b in BIRDNET_BLOCKS if b in self.birdnet_blocks))
        require(self.embedding_hop == 0 or 0.1 <= self.embedding_hop <= 600,
                 f"{s}.embedding_hop must be 0 (the window length) or 0.1 to 600 seconds, got {self.embedding_hop}")
        object.__setattr__(self, "birdnet_speeds", check_numbers(f"{s}.birdnet_speeds", self.birdnet_speeds,
                                                                 BIRDNET_SPEEDS))
        require(self.birdnet_precision in ("float32", "float64"),
                 f"{s}.birdnet_precision must be 'float32' or 'float64', got {self.birdnet_precision!r}")
        require(self.trainable_blocks >= 0, f"{s}.trainable_blocks must be >= 0, got {self.trainable_blocks}")
        require(0.0 <= self.dropout < 1.0, f"{s}.dropout must be in [0, 1), got {self.dropout}")

    @property
    def kind(self) -> ModelKind:
        """The model's kind (:mod:`echoengine.kinds`): a CNN on images, a head on an embedder's embeddings, ...

        Examples
        --------
        >>> ModelConfig().kind.name, ModelConfig(embedder="birdnet").kind.input
        ('cnn', 'embeddings')
        """
        return model_kind(self)

    @property
    def uses_birdnet(self) -> bool:
        """Whether BirdNET computes the model's inputs (as its embedder or its backbone)."""
        return self.kind.birdnet

    @property
    def head_name(self) -> str:
        """The head that ``head`` names: ``"auto"`` is ``"linear"`` on an embedder, else ``"echo"``.

        Examples
        --------
        >>> ModelConfig(embedder="birdnet").head_name, ModelConfig().head_name
        ('linear', 'echo')
        """
        if self.head != "auto":
            return self.head
        return self.kind.default_head


@dataclass(frozen=True)
class TrainConfig:
    """The training loop; defaults are the Echo pipeline's.

    Parameters
    ----------
    epochs : int
        Most epochs to run.
    learning_rate : float
        Adam's learning rate (1e-4).
    lr_factor, lr_patience, min_lr
        ReduceLROnPlateau on the validation loss (0.75, 8, 1e-7).
    patience : int
        Early stopping: epochs without a better validation loss (16); the
        best weights are restored.
    label_smoothing : float
        Of the cross-entropy targets.
    seed : int
        Model initialisation and data order.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
    optimizer : str
        ``"adam"`` (Echo), ``"adamw"`` or ``"adamax"``.
    weight_decay : float
        Decoupled for AdamW, L2 for the others.
    schedule : str
        ``"plateau"`` (Echo: ReduceLROnPlateau on the validation loss) or
        ``"cosine"`` (cosine decay from ``learning_rate`` to ``min_lr`` over
        ``epochs``).
    warmup_epochs : int
        Linear warm-up of the learning rate over the first epochs (any schedule).
    class_weights : str
        ``"none"`` or ``"balanced"`` (loss weights n_samples / (n_classes * count),
        scikit-learn's "balanced").
    freeze_backbone : bool
        Train only the head (transfer learning from pretrained weights).
    unfreeze_epoch : int
        With ``freeze_backbone``, train the whole network from this epoch on
        (0: never).
    backbone_lr_factor : float
        The backbone's learning rate relative to the head's once it trains.
    refit : bool
        After early stopping has chosen the number of epochs on the validation
        part, train again from scratch on training and validation data for
        that many epochs and keep the last weights (the validation files then
        add to the training data instead of only choosing the epoch).
    probe_epochs : int
        BirdNET fine-tuning (``model.backbone = "birdnet"``): first train the
        head alone on the frozen network's cached embeddings for up to this
        many epochs (Adam 1e-3, early stopping), then fine-tune from that head
        ("linear probing, then fine-tuning"); 0: the head starts at random.
        A linear head is fitted by L-BFGS with C from grouped inner CV
        (:mod:`echoengine.headfit`) instead, whatever the number. ``--finetune``
        turns this on: on the ESC-50 subset a warm-started head gained 3 points over frozen
        embeddings where a random head gained none (``bench/finetune_study.py``).
    solver : str
        ``"lbfgs"``: a linear head on frozen embeddings (mean pooling) is
        fitted to convergence by full-batch L-BFGS (softmax, or one-vs-rest
        with ``model.multilabel``), its L2 strength chosen by cross-validation
        over the training recordings (:mod:`echoengine.headfit`); an ``"mlp"``
        head is trained full-batch on the cached embeddings, its size, dropout,
        weight decay and epochs chosen by the same cross-validation
        (:mod:`echoengine.headmlp`): no validation part. ``"sgd"``: the epoch
        loop with the optimizer above. ``"auto"`` (default): ``"lbfgs"`` where
        it applies, else ``"sgd"``.
    head_mixup : float
        With ``solver`` ``"lbfgs"``: feature-space mixup of the cached clip
        embeddings, the Beta(alpha, alpha) of the mixing weights (0: off).
    head_ensemble : bool
        With ``solver`` ``"lbfgs"``: average the heads of the inner
        cross-validation's folds with the one fitted on all recordings.
    baseline : str
        ``"auto"``: ``cv`` of a head on an embedder also scores logistic
        regression on the same embeddings on every fold
        (:mod:`echoengine.baseline`); ``"none"``: not.
    """

    epochs: int = field(default=100, metadata={"help": "most epochs to run"})
    learning_rate: float = field(default=1e-4, metadata={"help": "learning rate", "flag": "--lr"})
    lr_factor: float = 0.75
    lr_patience: int = 8
    min_lr: float = 1e-7
    patience: int = field(default=16, metadata={"help": "early stopping patience in epochs"})
    label_smoothing: float = field(default=0.0, metadata={"help": "smoothing of the training targets"})
    seed: int = field(default=0, metadata={"help": "seed of the model initialisation and the data order"})
    device: str = field(default="auto", metadata={
        "help": "where to train (auto: CUDA when available)", "choices": ("auto", "cpu", "cuda")})
    optimizer: str = field(default="adam", metadata={"help": "the optimizer", "choices": ("adam", "adamw", "adamax")})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay: decoupled for AdamW, L2 for the others"})
    schedule: str = field(default="plateau", metadata={
        "help": "learning rate schedule: ReduceLROnPlateau on the validation loss, or cosine decay",
        "choices": ("plateau", "cosine")})
    warmup_epochs: int = field(default=0, metadata={"help": "linear warm-up of the learning rate over these epochs"})
    class_weights: str = field(default="none", metadata={
        "help": "loss weights per class (balanced: n_samples / (n_classes * count))", "choices": ("none", "balanced")})
    freeze_backbone: bool = field(default=False, metadata={"help": "train the head only"})
    unfreeze_epoch: int = field(default=0, metadata={
        "help": "with --freeze-backbone: train everything from this epoch (0: never)"})
    backbone_lr_factor: float = field(default=1.0, metadata={
        "help": "the backbone's learning rate relative to the head's"})
    refit: bool = field(default=False, metadata={
        "help": "after early stopping, train again on train + validation for the chosen epochs"})
    probe_epochs: int = field(default=0, metadata={
        "help": "with --finetune: first train the head on the frozen BirdNET embeddings (up to N epochs), then "
                "fine-tune from it", "metavar": "N"})
    solver: str = field(default="auto", metadata={
        "help": "lbfgs: a linear head on an embedder fitted to convergence, its L2 strength chosen by cross-validation "
                "over the training recordings (no validation part); auto: lbfgs where it applies, sgd (epochs) "
                "elsewhere", "choices": ("auto", "sgd", "lbfgs")})
    head_mixup: float = 0.0
    head_ensemble: bool = False
    baseline: str = field(default="auto", metadata={
        "help": "auto: cv of a head on an embedder scores logistic regression (C=1) on the same embeddings beside it, "
                "on the same folds", "choices": ("auto", "none")})

    def __post_init__(self) -> None:
        s = "train"
        require(self.baseline in ("auto", "none"), f"{s}.baseline must be 'auto' or 'none', got {self.baseline!r}")
        require(self.solver in ("auto", "sgd", "lbfgs"),
                 f"{s}.solver must be 'auto', 'sgd' or 'lbfgs', got {self.solver!r}")
        require(self.optimizer in ("adam", "adamw", "adamax"),
                 f"{s}.optimizer must be 'adam', 'adamw' or 'adamax', got {self.optimizer!r}")
        require(self.schedule in ("plateau", "cosine"),
                 f"{s}.schedule must be 'plateau' or 'cosine', got {self.schedule!r}")
        require(self.class_weights in ("none", "balanced"),
                 f"{s}.class_weights must be 'none' or 'balanced', got {self.class_weights!r}")
        require(self.weight_decay >= 0, f"{s}.weight_decay must be >= 0, got {self.weight_decay}")
        require(0 <= self.warmup_epochs < self.epochs,
                 f"{s}.warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        require(self.unfreeze_epoch >= 0, f"{s}.unfreeze_epoch must be >= 0, got {self.unfreeze_epoch}")
        require(not self.unfreeze_epoch or self.freeze_backbone,
                 f"{s}.unfreeze_epoch needs freeze_backbone = true (the backbone trains from the start otherwise)")
        require(self.backbone_lr_factor > 0, f"{s}.backbone_lr_factor must be positive")
        require(self.probe_epochs >= 0, f"{s}.probe_epochs must be >= 0, got {self.probe_epochs}")
        require(self.head_mixup >= 0, f"{s}.head_mixup must be >= 0 (0: off), got {self.head_mixup}")
        require(self.epochs >= 1, f"{s}.epochs must be >= 1, got {self.epochs}")
        require(self.learning_rate > 0, f"{s}.learning_rate must be positive, got {self.learning_rate}")
        require(0 < self.lr_factor < 1, f"{s}.lr_factor must be in (0, 1), got {self.lr_factor}")
        require(self.lr_patience >= 0 and self.patience >= 1, f"{s}: patience values must be >= 0 and >= 1")
        require(0 <= self.label_smoothing < 1, f"{s}.label_smoothing must be in [0, 1)")
        require(0 <= self.seed <= MAX_SEED, f"{s}.seed must be in [0, {MAX_SEED}], got {self.seed}")
        require(self.device in ("cpu", "cuda", "auto"), f"{s}.device must be 'cpu', 'cuda' or 'auto'")


_SECTIONS: dict[str, type] = {"audio": AudioConfig, "frontend": FrontendConfig, "image": ImageConfig,
                              "augment": AugmentConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                              "taxonomy": TaxonomyConfig}


def _section_from_dict(name: str, values: dict[str, Any]):
    cls = _SECTIONS[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in [{name}]: {', '.join(unknown)}; allowed keys are {', '.join(sorted(known))}"
        )
    return cls(**{key: coerce_value(name, key, hints[key], value) for key, value in values.items()})


def _to_toml_values(values: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: ``None`` is written as the string ``"none"``, tuples as lists."""
    return {k: _NONE if v is None else list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclass(frozen=True)
class EchoConfig:
    """All settings of the data path; the object passed down to every stage.

    Examples
    --------
    >>> cfg = EchoConfig.from_dict({"audio": {"sample_rate": 32000}, "frontend": {"fmax": 12000}})
    >>> cfg.audio.sample_rate
    32000
    >>> EchoConfig.from_dict({"frontend": {"fmax": 30000}})
    Traceback (most recent call last):
    ...
    echoengine.errors.ConfigError: frontend.fmax (30000.0 Hz) is above the Nyquist frequency ...
    """

    audio: AudioConfig = field(default_factory=AudioConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # the photo path's front end (data.kind = "images")
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)

    def __post_init__(self) -> None:
        rate = backbone_kind(self.model.backbone).sample_rate
        require(not rate or self.audio.sample_rate == rate,
                 f"the {self.model.backbone} backbone takes {rate / 1000:g} kHz audio: set audio.sample_rate = "
                 f"{rate}, not {self.audio.sample_rate}")
        nyquist = self.audio.sample_rate / 2
        require(
            self.frontend.fmax <= nyquist,
            f"frontend.fmax ({self.frontend.fmax} Hz) is above the Nyquist frequency of "
            f"audio.sample_rate {self.audio.sample_rate} ({nyquist:g} Hz)",
        )
        m = self.model
        require(not self.data.photos or (m.kind.input == IMAGES and not m.multilabel), "data.kind 'images' trains a "
                 f"CNN backbone, one label per photo (got {m.embedder or m.backbone}{', multilabel' * m.multilabel})")
        require(not self.train.probe_epochs or self.model.head_name in ("linear", "mlp"),
                 f"train.probe_epochs works with the linear and mlp heads, not {self.model.head!r}")
        require(self.train.solver != "lbfgs" or self.convex_head(strict=False),
                 "train.solver 'lbfgs' fits a linear or mlp head with mean pooling on a frozen embedder "
                 "(model.embedder set, model.head 'linear' or 'mlp', model.pooling 'mean')")
        fe, clip = self.frontend, self.audio.clip_samples
        require(
            not (fe.center and fe.pad_mode == "reflect") or clip > fe.n_fft // 2,
            f"frontend.pad_mode 'reflect' needs clips longer than n_fft/2 = {fe.n_fft // 2} samples, "
            f"got {clip}; use 'constant'",
        )
        require(
            fe.center or clip >= fe.n_fft,
            f"frontend.center = false needs clips of at least n_fft = {fe.n_fft} samples, got {clip}",
        )
        stft = (clip // fe.hop_length + 1) * (fe.n_fft // 2 + 1)
        require(stft <= MAX_STFT_VALUES,
                 f"the STFT of one clip would hold {stft} values ({clip} samples / hop_length {fe.hop_length} "
                 f"x n_fft {fe.n_fft} / 2), above {MAX_STFT_VALUES} (1 GiB); raise frontend.hop_length or "
                 "shorten audio.clip_seconds")
        batch = self.data.batch_size * fe.image_channels * fe.image_height * fe.image_width
        require(batch <= MAX_BATCH_VALUES,
                 f"a batch of data.batch_size {self.data.batch_size} model images of {fe.image_shape} would hold "
                 f"{batch} values, above {MAX_BATCH_VALUES} (4 GiB); lower data.batch_size or the image size")

    @property
    def window_seconds(self) -> float:
        """Seconds of the windows recordings are scored in: the clip, or BirdNET's 3 s for models on BirdNET.

        >>> EchoConfig().window_seconds, EchoConfig().replace(model={"embedder": "birdnet"}).window_seconds
        (5.0, 3.0)
        """
        return self.model.kind.window_seconds or self.audio.clip_seconds

    @property
    def window_samples(self) -> int:  # samples of the windows recordings are scored in
        return round(self.window_seconds * self.audio.sample_rate)

    def convex_head(self, *, strict: bool = True) -> bool:
        """Whether a head on cached embeddings is fitted full-batch with inner-CV selection, not by epochs.

        Linear heads by L-BFGS (:mod:`echoengine.headfit`), MLP heads by
        :mod:`echoengine.headmlp`. ``strict=False`` says whether it could
        (``train.solver = "lbfgs"`` is allowed).

        Examples
        --------
        >>> EchoConfig().replace(model={"embedder": "birdnet"}).convex_head()
        True
        >>> EchoConfig().replace(model={"embedder": "birdnet", "head": "attention"}).convex_head()
        False
        """
        model = self.model
        possible = model.kind.input == EMBEDDINGS and model.head_name in ("linear", "mlp") and model.pooling == "mean"
        return possible and (not strict or self.train.solver != "sgd")

    # ---- dict / TOML ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict, TOML-ready (``None`` is written as ``"none"``)."""
        out: dict[str, Any] = {"version": CONFIG_VERSION}
        for name in _SECTIONS:
            out[name] = _to_toml_values(dataclasses.asdict(getattr(self, name)))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EchoConfig:
        """Build a config from a nested dict; missing keys take defaults."""
        values = dict(values)
        version = values.pop("version", CONFIG_VERSION)
        require(version in (1, CONFIG_VERSION),
                 f"config version {version} is not supported (expected 1 to {CONFIG_VERSION})")
        model = values.get("model", {})
        require(isinstance(model, dict), "[model] must be a table of keys")
        birdnet = uses_birdnet(embedder=str(model.get("embedder", "")), backbone=str(model.get("backbone", "")))
        if version == 1 and birdnet:  # before BirdNET's blocks joined its embedding
            values["model"] = {"birdnet_blocks": [], **model}
        unknown = sorted(set(values) - set(_SECTIONS))
        require(not unknown, f"unknown section(s): {', '.join(unknown)}; allowed: {', '.join(_SECTIONS)}")
        sections = {}
        for name, section_values in values.items():
            require(isinstance(section_values, dict), f"[{name}] must be a table of keys")
            sections[name] = _section_from_dict(name, section_values)
        return cls(**sections)

    @classmethod
    def load(cls, path: str | Path) -> EchoConfig:
        """Read a TOML file written by :meth:`save` (or by hand)."""
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                              "a config is a TOML file: save it as UTF-8") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        try:
            return cls.from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the config as TOML, whole (a temporary file, then a rename), and return the path."""
        return write_text_atomic(path, tomli_w.dumps(self.to_dict()))

    # ---- derived ---------------------------------------------------------
    def replace(self, **sections: dict[str, Any]) -> EchoConfig:
        """A copy with some keys of some sections changed.

        Values are checked as if they came from a TOML file.
        """
        merged = self.to_dict()
        for name, changes in sections.items():
            require(name in _SECTIONS, f"unknown section {name!r}; allowed: {', '.join(_SECTIONS)}")
            merged[name] = {**merged[name], **_to_toml_values(changes)}
        return EchoConfig.from_dict(merged)

    def portable(self) -> EchoConfig:
        """A copy with the settings of the machine running a command (:data:`MACHINE_SETTINGS`) at their defaults.

        A bundle stores and loads its config this way: where to cache, how
        many workers and which device belong to the reader's machine, never to
        a model file that may come from a stranger.

        Examples
        --------
        >>> EchoConfig().replace(data={"cache_dir": "/elsewhere"}).portable().data.cache_dir
        ''
        """
        return self.replace(**_machine_defaults())

    def with_machine_settings(self, other: EchoConfig) -> EchoConfig:
        """A copy that takes its :data:`MACHINE_SETTINGS` from ``other`` (the command's own)."""
        changes: dict[str, dict[str, Any]] = {}
        for setting in MACHINE_SETTINGS:
            section, key = setting.split(".")
            changes.setdefault(section, {})[key] = getattr(getattr(other, section), key)
        return self.replace(**changes)

    def fingerprint(self, *sections: str, ignore: tuple[str, ...] = ()) -> str:
        """A short hash of the named sections (all when none are named).

        Two configs with the same fingerprint produce the same features, so
        the feature cache uses it in its keys. ``ignore`` lists
        ``"section.key"`` entries that do not change what is hashed for.
        """
        names = sections or tuple(_SECTIONS)
        values = self.to_dict()
        payload = {name: {k: v for k, v in values[name].items() if f"{name}.{k}" not in ignore} for name in names}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


#: Settings of the machine (and user) that runs a command, not of a model: never read from a bundle.
MACHINE_SETTINGS = ("data.cache_dir", "data.cache_size_gb", "data.cache_identity", "data.num_workers", "train.device",
                    "data.allow_outside_paths")


def _machine_defaults() -> dict[str, dict[str, Any]]:
    defaults = EchoConfig().to_dict()
    changes: dict[str, dict[str, Any]] = {}
    for setting in MACHINE_SETTINGS:
        section, key = setting.split(".")
        changes.setdefault(section, {})[key] = defaults[section][key]
    return changes
