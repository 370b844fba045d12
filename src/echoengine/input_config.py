"""The sections of the config that describe a model's input: ``[audio]``, ``[frontend]``, ``[augment]``, ``[data]``.

Each is a frozen dataclass that checks its own values on construction, so an
invalid value fails where it is written, with a message naming the key. The
checks they share (:func:`require` and friends) serve the other sections of
:mod:`echoengine.config` too, which also re-exports these classes.

Examples
--------
>>> AudioConfig().clip_samples
240000
>>> DataConfig(folds=1)
Traceback (most recent call last):
...
echoengine.errors.ConfigError: data.folds must be >= 2, got 1
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

from echoengine.errors import ConfigError

__all__ = ["AUDIO", "AUDIO_EXTENSIONS", "DATA_KINDS", "IMAGE_EXTENSIONS", "MAX_BATCH_VALUES", "MAX_CLIP_SAMPLES",
           "MAX_SEED", "MAX_STFT_VALUES", "PHOTOS", "RESAMPLE_QUALITIES", "AudioConfig", "AugmentConfig", "DataConfig",
           "FrontendConfig", "ImageConfig", "check_at_most", "check_numbers", "check_probability", "check_range",
           "coerce_value", "require"]

#: File extensions read as audio (lower case): WAV, FLAC, Ogg and AIFF by soundfile, the rest by PyAV (FFmpeg).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus", ".wma", ".oga", ".aif", ".aiff")
#: File extensions read as photographs (lower case), decoded by Pillow.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: What a dataset holds (``data.kind``): sound recordings, or photographs (camera traps).
AUDIO, PHOTOS = "audio", "images"
DATA_KINDS = {AUDIO: AUDIO_EXTENSIONS, PHOTOS: IMAGE_EXTENSIONS}


#: Most samples in one clip (512 MiB as float32): ``audio.clip_seconds`` x ``audio.sample_rate``.
MAX_CLIP_SAMPLES = 2**27
#: Most values in the STFT of one clip (1 GiB as complex64): frames x (``n_fft`` / 2 + 1).
MAX_STFT_VALUES = 2**27
#: Most values in one batch of model images (4 GiB as float32): ``data.batch_size`` x channels x height x width.
MAX_BATCH_VALUES = 2**30
MAX_SEED = 2**32 - 1  # numpy, torch and scikit-learn all take seeds up to this
#: ``audio.resample_quality``: soxr's qualities, then resampy's filters (librosa's ``res_type`` names).
RESAMPLE_QUALITIES = ("VHQ", "HQ", "MQ", "LQ", "QQ", "kaiser_fast", "kaiser_best")


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_probability(section: str, name: str, value: float) -> None:
    require(0.0 <= value <= 1.0, f"{section}.{name} must be a probability in [0, 1], got {value}")


def check_range(section: str, name: str, low: float, high: float) -> None:
    require(low <= high, f"{section}.{name}: minimum {low} is above maximum {high}")


def check_numbers(where: str, values, allowed: tuple[float, ...]) -> tuple[float, ...]:
    """The numbers of a list option, each one of ``allowed``: ascending, once each; anything else is a ConfigError.

    >>> check_numbers("model.birdnet_speeds", ["2", 1, 2.0], (0.5, 1.0, 2.0))
    (1.0, 2.0)
    """
    try:
        numbers = {float(value) for value in values}
    except (TypeError, ValueError):
        numbers = {float("nan")}
    require(bool(numbers) and numbers <= set(allowed),
            f"{where} must be one or more of {', '.join(f'{a:g}' for a in allowed)}, got {list(values)}")
    return tuple(sorted(numbers))


def check_at_most(section: str, name: str, value: float, high: float, why: str) -> None:
    """An upper bound on a size, so that a typo cannot ask for an allocation no machine has."""
    require(value <= high, f"{section}.{name} must be at most {high} ({why}), got {value}")


@dataclass(frozen=True)
class AudioConfig:
    """How audio files are decoded and cut into clips.

    Parameters
    ----------
    sample_rate : int
        Every file is resampled to this rate (Hz); at most 1,000,000.
    clip_seconds : float
        Length of one model input clip; at most 600 s, and at most
        :data:`MAX_CLIP_SAMPLES` (2**27) samples at ``sample_rate``.
    channel : str or int
        ``"mean"`` averages the channels; an integer picks one channel
        (0-based; the Echo pipeline kept channel 1, the right one).
    resample_quality : str
        soxr quality: ``"VHQ"``, ``"HQ"`` (librosa's default), ``"MQ"``,
        ``"LQ"`` or ``"QQ"``; or resampy's filter ``"kaiser_fast"``
        (BirdNET-Analyzer's, the built-in ``birdnet``'s) or ``"kaiser_best"``,
        which need the ``birdnet`` extra (:mod:`echoengine.resampling`).
    min_seconds : float
        Files shorter than this are reported as unusable.
    pad : str
        Where silence goes when a clip is shorter than ``clip_seconds``:
        ``"end"`` (the Echo pipeline), ``"center"`` or ``"random"``.
    """

    sample_rate: int = 48000
    clip_seconds: float = 5.0
    channel: str | int = "mean"
    resample_quality: str = "HQ"
    min_seconds: float = 0.1
    pad: str = "end"

    def __post_init__(self) -> None:
        s = "audio"
        require(self.sample_rate > 0, f"{s}.sample_rate must be positive, got {self.sample_rate}")
        check_at_most(s, "sample_rate", self.sample_rate, 1_000_000, "Hz, above any recorder's rate")
        require(self.clip_seconds > 0, f"{s}.clip_seconds must be positive, got {self.clip_seconds}")
        check_at_most(s, "clip_seconds", self.clip_seconds, 600, "seconds per model input clip")
        require(
            1 <= self.clip_samples <= MAX_CLIP_SAMPLES,
            f"{s}: a clip of clip_seconds x sample_rate = {self.clip_samples} samples must hold 1 to "
            f"{MAX_CLIP_SAMPLES} samples (512 MiB); change audio.clip_seconds or audio.sample_rate",
        )
        require(
            self.channel == "mean" or (isinstance(self.channel, int) and self.channel >= 0),
            f"{s}.channel must be 'mean' or a channel index >= 0, got {self.channel!r}",
        )
        require(
            self.resample_quality in RESAMPLE_QUALITIES,
            f"{s}.resample_quality must be one of {', '.join(RESAMPLE_QUALITIES)}, got {self.resample_quality!r}",
        )
        require(self.min_seconds >= 0, f"{s}.min_seconds must be >= 0, got {self.min_seconds}")
        require(
            self.pad in ("end", "center", "random"),
            f"{s}.pad must be 'end', 'center' or 'random', got {self.pad!r}",
        )

    @property
    def clip_samples(self) -> int:
        """Samples in one clip at ``sample_rate``."""
        return round(self.clip_seconds * self.sample_rate)


@dataclass(frozen=True)
class FrontendConfig:
    """The mel spectrogram and the model image made from it.

    Parameters
    ----------
    n_fft, hop_length, win_length, window, center, pad_mode
        STFT settings with librosa's meaning; ``win_length`` defaults to
        ``n_fft``. ``n_fft`` and ``hop_length`` are at most 65536, and the
        STFT of one clip at most :data:`MAX_STFT_VALUES` (2**27) values.
    n_mels, fmin, fmax, htk, norm
        Mel filter bank (``librosa.filters.mel``); ``norm`` is ``"slaney"``
        or ``"none"``; at most 1024 mel bands.
    power : float
        Exponent of the magnitude (2: power spectrogram).
    top_db, ref, amin
        ``librosa.power_to_db`` settings; ``top_db = None`` disables the floor.
    image_height, image_width, image_channels
        The model image: height is time, width is mel bands (the Echo
        layout), the single channel repeated ``image_channels`` times.
        At most 2048 x 2048 pixels and 4 channels.
    resize : str
        ``"lanczos5"`` (the Echo pipeline's ``tf.image.resize`` method),
        ``"bilinear"`` or ``"bicubic"``.
    resize_antialias : bool
        Widen the resize kernel when shrinking (as PIL does). The Echo
        pipeline did not (``tf.image.resize``'s default); False reproduces it.
        See :mod:`echoengine.features` for how they differ.
    """

    n_fft: int = 2048
    hop_length: int = 200
    win_length: int | None = None
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    n_mels: int = 260
    fmin: float = 20.0
    fmax: float = 13000.0
    htk: bool = False
    norm: str = "slaney"
    power: float = 2.0
    top_db: float | None = 80.0
    ref: float = 1.0
    amin: float = 1e-10
    image_height: int = 260
    image_width: int = 260
    image_channels: int = 3
    resize: str = "lanczos5"
    resize_antialias: bool = True

    def __post_init__(self) -> None:
        s = "frontend"
        require(self.n_fft > 0, f"{s}.n_fft must be positive, got {self.n_fft}")
        require(self.hop_length > 0, f"{s}.hop_length must be positive, got {self.hop_length}")
        for name in ("n_fft", "hop_length"):
            check_at_most(s, name, getattr(self, name), 65536, "samples")
        require(
            self.win_length is None or 0 < self.win_length <= self.n_fft,
            f"{s}.win_length must be in [1, n_fft={self.n_fft}], got {self.win_length}",
        )
        require(self.pad_mode in ("constant", "reflect"), f"{s}.pad_mode must be 'constant' or 'reflect'")
        _check_window(s, self.window)
        require(self.n_mels > 0, f"{s}.n_mels must be positive, got {self.n_mels}")
        check_at_most(s, "n_mels", self.n_mels, 1024, "mel bands")
        require(self.fmin >= 0, f"{s}.fmin must be >= 0, got {self.fmin}")
        require(self.fmin < self.fmax, f"{s}.fmin ({self.fmin}) must be below fmax ({self.fmax})")
        require(self.norm in ("slaney", "none"), f"{s}.norm must be 'slaney' or 'none', got {self.norm!r}")
        require(self.power > 0, f"{s}.power must be positive, got {self.power}")
        require(self.top_db is None or self.top_db >= 0, f"{s}.top_db must be >= 0, got {self.top_db}")
        require(self.ref > 0 and self.amin > 0, f"{s}.ref and {s}.amin must be positive")
        for name, high in (("image_height", 2048), ("image_width", 2048), ("image_channels", 4)):
            require(getattr(self, name) > 0, f"{s}.{name} must be positive, got {getattr(self, name)}")
            check_at_most(s, name, getattr(self, name), high, "of the model image")
        require(
            self.resize in ("lanczos5", "bilinear", "bicubic"),
            f"{s}.resize must be 'lanczos5', 'bilinear' or 'bicubic', got {self.resize!r}",
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one model input."""
        return (self.image_channels, self.image_height, self.image_width)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; each one is switched off by ``p = 0``.

    The waveform defaults are the Echo pipeline's (audiomentations, each with
    p = 0.2), as is the rotation of every image by up to 2 degrees.
    SpecAugment masks and mixup are off by default.

    Parameters
    ----------
    variants : int
        Augmented variants computed (and cached) per training sample; an
        epoch draws one of them per sample. At most 1000.
    seed : int
        Variant ``k`` of a sample is a function of ``(seed, k, sample)``;
        0 to 2**32 - 1.
    time_masks, freq_masks : int
        SpecAugment masks per image; at most 100 each.
    embedding_variants : int
        The same for models on a pretrained embedder, where each variant
        costs a pass of the embedder: fewer, computed once and cached.
        At most 1000.
    """

    variants: int = 20
    seed: int = 0
    noise_p: float = 0.2
    noise_min_amplitude: float = 0.001
    noise_max_amplitude: float = 0.015
    time_stretch_p: float = 0.2
    time_stretch_min_rate: float = 0.8
    time_stretch_max_rate: float = 1.25
    pitch_shift_p: float = 0.2
    pitch_shift_min_semitones: float = -4.0
    pitch_shift_max_semitones: float = 4.0
    shift_p: float = 0.2
    shift_min_fraction: float = -0.5
    shift_max_fraction: float = 0.5
    specaugment_p: float = 0.0
    time_masks: int = 2
    time_mask_fraction: float = 0.1
    freq_masks: int = 2
    freq_mask_fraction: float = 0.1
    rotation_p: float = 1.0
    rotation_degrees: float = 2.0
    mixup_p: float = field(default=0.0, metadata={
        "help": "probability of mixup per batch", "flag": "--mixup", "metavar": "P"})
    mixup_alpha: float = 0.4
    embedding_variants: int = 4

    def __post_init__(self) -> None:
        s = "augment"
        require(self.variants >= 1, f"{s}.variants must be >= 1, got {self.variants}")
        require(self.seed >= 0, f"{s}.seed must be >= 0, got {self.seed}")
        for name, high, why in (("variants", 1000, "each is computed and cached"),
                                ("embedding_variants", 1000, "each is computed and cached"),
                                ("time_masks", 100, "masks per image"), ("freq_masks", 100, "masks per image"),
                                ("seed", MAX_SEED, "the largest seed numpy, torch and scikit-learn take")):
            check_at_most(s, name, getattr(self, name), high, why)
        for name in ("noise_p", "time_stretch_p", "pitch_shift_p", "shift_p", "specaugment_p", "rotation_p", "mixup_p"):
            check_probability(s, name, getattr(self, name))
        check_range(s, "noise amplitude", self.noise_min_amplitude, self.noise_max_amplitude)
        require(self.time_stretch_min_rate > 0, f"{s}.time_stretch_min_rate must be positive")
        check_range(s, "time_stretch rate", self.time_stretch_min_rate, self.time_stretch_max_rate)
        check_range(s, "pitch_shift semitones", self.pitch_shift_min_semitones, self.pitch_shift_max_semitones)
        check_range(s, "shift fraction", self.shift_min_fraction, self.shift_max_fraction)
        for name in ("time_mask_fraction", "freq_mask_fraction"):
            check_probability(s, name, getattr(self, name))
        require(self.time_masks >= 0 and self.freq_masks >= 0, f"{s}: mask counts must be >= 0")
        require(self.rotation_degrees >= 0, f"{s}.rotation_degrees must be >= 0")
        require(self.mixup_alpha > 0, f"{s}.mixup_alpha must be positive, got {self.mixup_alpha}")
        require(self.embedding_variants >= 1, f"{s}.embedding_variants must be >= 1")


@dataclass(frozen=True)
class ImageConfig:
    """How photographs become model inputs (``data.kind = "images"``): the photo path's front end.

    Each image is decoded by Pillow, turned upright by its EXIF orientation,
    converted to RGB and fitted to ``size`` x ``size`` pixels (:mod:`echoengine.images`);
    the model takes it scaled to [0, 1] and normalised by ``mean`` and ``std``.

    Parameters
    ----------
    size : int
        Side of the square model input in pixels; 16 to 2048.
    resize : str
        ``"crop"``: the shorter side scaled to ``size / crop_fraction``, then
        the centre ``size`` x ``size`` cut out (timm's evaluation transform);
        ``"squash"``: scaled to ``size`` x ``size``, whatever the aspect ratio.
    crop_fraction : float
        With ``"crop"``: the part of the shorter side kept (0.875 as timm; 1:
        the largest centred square), in (0, 1].
    interpolation : str
        Pillow's resampling filter: ``"bilinear"``, ``"bicubic"``, ``"lanczos"`` or ``"nearest"``.
    mean, std : tuple of float
        Per-channel (R, G, B) normalisation of the [0, 1] pixels; ImageNet's by default,
        as pretrained timm backbones expect.
    min_scale : float
        Training augmentation: each variant is a random crop of this fraction
        of the image's area up to all of it (aspect ratio 3/4 to 4/3), resized
        to ``size``; 1: the evaluation image.
    flip_p : float
        Training augmentation: probability of a horizontal flip.

    Examples
    --------
    >>> ImageConfig().size
    224
    >>> ImageConfig(size=8)
    Traceback (most recent call last):
    ...
    echoengine.errors.ConfigError: image.size must be 16 to 2048 pixels, got 8
    """

    size: int = field(default=224, metadata={
        "help": "photos: side of the square model input in pixels", "flag": "--image-size", "metavar": "PIXELS",
        "commands": ("train", "cv")})
    resize: str = "crop"
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    min_scale: float = 0.5
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        s = "image"
        require(isinstance(self.size, int) and 16 <= self.size <= 2048,
                f"{s}.size must be 16 to 2048 pixels, got {self.size}")
        require(self.resize in ("crop", "squash"), f"{s}.resize must be 'crop' or 'squash', got {self.resize!r}")
        require(0 < self.crop_fraction <= 1, f"{s}.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        require(self.interpolation in ("bilinear", "bicubic", "lanczos", "nearest"),
                f"{s}.interpolation must be 'bilinear', 'bicubic', 'lanczos' or 'nearest', got {self.interpolation!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            require(len(values) == 3 and all(isinstance(v, (int, float)) for v in values),
                    f"{s}.{name} must be 3 numbers (R, G, B), got {list(values)}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        require(all(v > 0 for v in self.std), f"{s}.std must be positive, got {list(self.std)}")
        require(0 < self.min_scale <= 1, f"{s}.min_scale must be in (0, 1], got {self.min_scale}")
        check_probability(s, "flip_p", self.flip_p)


@dataclass(frozen=True)
class DataConfig:
    """Datasets, splits, loading and the feature cache.

    Parameters
    ----------
    extensions : tuple of str
        File extensions to collect from folders: among :data:`AUDIO_EXTENSIONS`,
        or :data:`IMAGE_EXTENSIONS` for photos. Either kind's full list means
        "the kind's own": it follows ``kind`` when that changes.
    kind : str
        ``"audio"`` (recordings through ``[audio]`` and ``[frontend]``) or
        ``"images"`` (photographs through ``[image]``; CNN backbones only).
        A bundle of one kind refuses data of the other.
    group_regex : str
        Regular expression on file names whose first group (or whole match)
        names the source recording; empty means each file is its own group
        unless the dataset says otherwise (ESC-50's ``src_file``).
    val_fraction, test_fraction, folds, split_seed
        Grouped, stratified splits; 2 to 100 folds, seed 0 to 2**32 - 1.
    batch_size, num_workers
        DataLoader settings (batch 16 as in the Echo pipeline); at most
        4096 samples a batch (and :data:`MAX_BATCH_VALUES` values in a batch
        of model images) and 256 workers.
    cache_dir : str
        Feature cache folder; empty disables the cache.
    cache_size_gb : float
        Size limit of the cache; least recently stored entries are evicted.
        At most 100000 (100 TB).
    cache_identity : str
        ``"stat"`` (size and modification time) or ``"content"`` (hash of the
        bytes) identifies a file in cache keys.
    on_error : str
        What to do with an unusable file: ``"warn"`` (one line, then skip),
        ``"ignore"`` (skip silently) or ``"raise"``.
    allow_outside_paths : bool
        Use the rows of a dataset CSV that name files outside the dataset's
        audio folder (``../x.wav``, absolute paths); refused by default. A
        setting of the reader (:data:`MACHINE_SETTINGS`), never read from a
        bundle.
    sparse_classes : str
        A class with a single source recording cannot be both trained on and
        held out: ``"train"`` (the default) trains on it in every split and
        fold and never tests it (a rare species stays in the model, with a
        warning naming it), ``"drop"`` leaves it out of splits and
        cross-validation, ``"error"`` stops with a message naming it.
    min_overlap, min_overlap_fraction : float
        Multi-label data: a clip holds an annotated box when they overlap by
        at least ``min_overlap`` seconds or by this fraction of the box.
    frequency_overlap : bool
        Multi-label data: a box counts only when its frequencies overlap the
        front end's ``fmin``-``fmax`` band.
    unlabeled : str
        Multi-label data: a species with no box in a clip is a negative
        (``"negative"``) or left out of the loss (``"ignore"``); verified
        negatives are negatives either way.
    box_jitter : float
        Multi-label training crops hold a box; 0 centres it, 1 lets it sit anywhere in the crop.
    background_crops : int
        Multi-label training: crops drawn anywhere per recording per epoch, besides one per box; at most 1000.
    """

    extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    kind: str = AUDIO
    group_regex: str = field(default="", metadata={
        "help": "regex on file names whose first group names the source recording", "metavar": "REGEX",
        "commands": ("inspect", "preview", "split", "train", "cv", "mix")})
    val_fraction: float = field(default=0.15, metadata={
        "help": "validation fraction", "flag": "--val", "commands": ("split",)})
    test_fraction: float = field(default=0.15, metadata={
        "help": "test fraction", "flag": "--test", "commands": ("split",)})
    folds: int = field(default=5, metadata={"help": "number of folds", "commands": ("cv", "split")})
    split_seed: int = field(default=0, metadata={"help": "split seed", "flag": "--seed", "commands": ("split",)})
    batch_size: int = field(default=16, metadata={"help": "samples per batch"})
    num_workers: int = field(default=0, metadata={
        "help": "data loading processes (0: in the main process)", "flag": "--workers"})
    cache_dir: str = ""
    cache_size_gb: float = 4.0
    cache_identity: str = "stat"
    on_error: str = "warn"
    allow_outside_paths: bool = field(default=False, metadata={
        "help": "use CSV rows naming files outside the dataset folder (../x.wav, absolute paths)",
        "commands": ("inspect", "preview", "split", "train", "cv", "mix", "evaluate", "calibrate")})
    sparse_classes: str = field(default="train", metadata={
        "help": "classes with a single source recording: train on them without testing them, leave them out, "
                "or stop with an error",
        "choices": ("train", "drop", "error"), "commands": ("train", "cv", "split")})
    min_overlap: float = field(default=0.5, metadata={
        "help": "multi-label: a clip holds a box overlapping it this long, or by min_overlap_fraction of the box",
        "metavar": "SECONDS"})
    min_overlap_fraction: float = 0.5
    frequency_overlap: bool = field(default=False, metadata={
        "help": "multi-label: count only boxes whose frequencies overlap the front end's band"})
    unlabeled: str = field(default="negative", metadata={
        "help": "multi-label: a species with no box in a clip is a negative, or left out of the loss",
        "choices": ("negative", "ignore")})
    box_jitter: float = 1.0
    background_crops: int = 1

    @property
    def photos(self) -> bool:
        """Whether the data are photographs (``kind = "images"``), not recordings."""
        return self.kind == PHOTOS

    def __post_init__(self) -> None:
        s = "data"
        require(self.kind in DATA_KINDS, f"{s}.kind must be 'audio' or 'images', got {self.kind!r}")
        allowed = DATA_KINDS[self.kind]
        require(all(isinstance(e, str) for e in self.extensions),
                f"{s}.extensions must be file extensions such as '.wav', got {list(self.extensions)}")
        if any(set(self.extensions) == set(full) for full in DATA_KINDS.values()):
            object.__setattr__(self, "extensions", allowed)  # the kind's own list, whichever kind it was
        require(
            all(isinstance(e, str) and e in allowed for e in self.extensions),
            f"{s}.extensions must be among {', '.join(allowed)} (lower case) for data.kind {self.kind!r}, got "
            f"{list(self.extensions)}",
        )
        require(self.split_seed >= 0, f"{s}.split_seed must be >= 0, got {self.split_seed}")
        for name in ("val_fraction", "test_fraction"):
            require(0.0 <= getattr(self, name) < 1.0, f"{s}.{name} must be in [0, 1)")
        require(self.val_fraction + self.test_fraction < 1.0, f"{s}: val_fraction + test_fraction must be below 1")
        require(self.folds >= 2, f"{s}.folds must be >= 2, got {self.folds}")
        require(self.batch_size >= 1, f"{s}.batch_size must be >= 1, got {self.batch_size}")
        require(self.num_workers >= 0, f"{s}.num_workers must be >= 0, got {self.num_workers}")
        require(self.cache_size_gb > 0, f"{s}.cache_size_gb must be positive")
        for name, high, why in (("folds", 100, "one model is trained per fold"),
                                ("split_seed", MAX_SEED, "the largest seed numpy and scikit-learn take"),
                                ("batch_size", 4096, "samples held in memory at once"),
                                ("num_workers", 256, "processes"), ("cache_size_gb", 100_000, "GB of disk"),
                                ("background_crops", 1000, "crops per recording and epoch")):
            check_at_most(s, name, getattr(self, name), high, why)
        require(self.cache_identity in ("stat", "content"), f"{s}.cache_identity must be 'stat' or 'content'")
        require(self.on_error in ("warn", "ignore", "raise"), f"{s}.on_error must be 'warn', 'ignore' or 'raise'")
        require(self.sparse_classes in ("train", "drop", "error"),
                f"{s}.sparse_classes must be 'train', 'drop' or 'error'")
        require(self.unlabeled in ("negative", "ignore"), f"{s}.unlabeled must be 'negative' or 'ignore'")
        require(self.min_overlap >= 0 and 0 < self.min_overlap_fraction <= 1,
                 f"{s}: min_overlap must be >= 0 and min_overlap_fraction in (0, 1]")
        require(0 <= self.box_jitter <= 1, f"{s}.box_jitter must be in [0, 1]")
        require(self.background_crops >= 0, f"{s}.background_crops must be >= 0")


#: Windows every scipy knows, accepted without importing scipy.signal (half a second: every config load paid it).
_KNOWN_WINDOWS = frozenset({"hann", "hamming", "blackman", "bartlett", "boxcar", "triang", "flattop", "parzen",
                            "bohman", "blackmanharris", "nuttall", "barthann", "cosine", "lanczos"})


def _check_window(section: str, window: str) -> None:
    """Refuse a window scipy does not know; without scipy (the serving runtime: the graph holds the front
    end) there is nothing to check it against, nor anything that computes it."""
    if window in _KNOWN_WINDOWS:
        return
    try:
        from scipy.signal import get_window  # scipy: training's dependency, and a heavy import
    except ModuleNotFoundError:
        return
    try:
        get_window(window, 16)
    except ValueError:
        raise ConfigError(f"{section}.window {window!r} is not a window scipy.signal.get_window knows") from None


def coerce_value(section: str, name: str, hint: Any, value: Any) -> Any:
    """Check one TOML value against the field's type hint and convert it (``"none"`` is None where allowed).

    >>> coerce_value("data", "folds", int, 5), coerce_value("model", "birdnet_speeds", tuple[float, ...], [1.0])
    (5, (1.0,))
    """
    where = f"{section}.{name}"
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if is_union else (hint,)
    if type(None) in options and (value is None or value == "none"):
        return None
    if typing.get_origin(hint) is tuple or tuple in options:
        require(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}")
        return tuple(value)
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where} must be {names}, got {value!r}")
