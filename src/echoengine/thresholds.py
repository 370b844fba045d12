"""Per-class detection thresholds: ``thresholds.csv`` beside a bundle, tied to the weights it was calibrated on.

``echoengine calibrate`` writes one row per class (``class, threshold, f1,
precision, recall, positives``) and a last ``weights`` column holding the
digest of the weights the thresholds were chosen with
(:func:`echoengine.layout.weights_digest`; for a cross-validation folder,
one digest over its fold bundles', see :func:`models_digest`). The file
stays a plain CSV a person can open. :func:`load_thresholds` checks every
row and refuses a table calibrated for other weights: retrained weights
score differently, and their thresholds must be chosen again.

Examples
--------
>>> import tempfile
>>> from echoengine.config import EchoConfig
>>> from echoengine.layout import WEIGHTS_FILE, write_metadata
>>> folder = write_metadata(tempfile.mkdtemp(), EchoConfig(), ["frog", "owl"])
>>> _ = (folder / WEIGHTS_FILE).write_bytes(b"weights")
>>> _ = write_thresholds(folder, pd.DataFrame({"class": ["frog", "owl"], "threshold": [0.25, 0.7]}))
>>> print((folder / THRESHOLDS_FILE).read_text(), end="")
class,threshold,weights
frog,0.25,8eaa55a578eb0f70
owl,0.7,8eaa55a578eb0f70
>>> load_thresholds(folder, ["owl", "frog"]).tolist()
[0.7, 0.25]
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import EchoError
from echoengine.files import write_csv_atomic
from echoengine.layout import THRESHOLDS_FILE, BundleFiles, find_bundles, weights_digest

__all__ = ["DEFAULT_THRESHOLD", "THRESHOLDS_FILE", "load_thresholds", "models_digest", "write_thresholds"]

DEFAULT_THRESHOLD = 0.5
_WEIGHTS_COLUMN = "weights"
_RECALIBRATE = "re-run `echoengine calibrate`"
logger = logging.getLogger(__name__)


def models_digest(folder: str | Path) -> str:
    """The weights digest of a bundle, or one digest over the fold bundles of a cross-validation folder."""
    folder = Path(folder)
    members = find_bundles(folder)
    if members == [folder]:
        return weights_digest(folder)
    combined = hashlib.blake2b(digest_size=8)
    for member in members:
        combined.update(f"{member.name}:{weights_digest(member)}\n".encode())
    return combined.hexdigest()


def write_thresholds(folder: str | Path, table: pd.DataFrame) -> Path:
    """Write ``folder/thresholds.csv`` (scores rounded to 4 decimals) recording the weights it belongs to.

    Parameters
    ----------
    folder : path
        The bundle, or the cross-validation folder, the thresholds were calibrated for.
    table : DataFrame
        ``class``, ``threshold`` and any other per-class columns
        (:func:`echoengine.evaluation.calibrate` gives them).

    Returns
    -------
    Path
        The file, written whole and then renamed into place.
    """
    table = table.drop(columns=_WEIGHTS_COLUMN, errors="ignore").round(4)
    table[_WEIGHTS_COLUMN] = models_digest(folder)
    return write_csv_atomic(BundleFiles(folder).thresholds, table, index=False, lineterminator="\n")


def load_thresholds(folder: str | Path, classes: Sequence[str]) -> np.ndarray | None:
    """Per-class thresholds from ``folder/thresholds.csv`` in the order of ``classes``; None without the file.

    Raises
    ------
    EchoError
        One line naming the file: not a readable CSV, no ``class`` or
        ``threshold`` column, a class listed twice or missing, a threshold
        that is not a number or lies outside [0, 1], or thresholds
        calibrated for other weights than the model's.
    """
    path = BundleFiles(folder).thresholds
    if not path.is_file():
        return None
    table = _read(path)
    _check_weights(path, table, folder)
    duplicated = table.loc[table["class"].duplicated(), "class"].tolist()
    if duplicated:
        raise EchoError(f"{path}: class {duplicated[0]!r} is listed more than once; {_RECALIBRATE}")
    rows = table.set_index("class")["threshold"]
    missing = [c for c in classes if c not in rows.index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise EchoError(f"{path}: no threshold for {len(missing)} of the model's classes ({shown}); {_RECALIBRATE}")
    values = []
    for name in classes:
        text = rows[name].strip()
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isnan(value):
            raise EchoError(f"{path}: the threshold of {name!r} is not a number ({text!r}); {_RECALIBRATE}")
        if not 0.0 <= value <= 1.0:
            raise EchoError(f"{path}: the threshold of {name!r} is {text}, outside [0, 1] (scores are probabilities)")
        values.append(value)
    return np.array(values)


def _read(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, OSError) as exc:  # UnicodeDecodeError and pandas' ParserError are ValueErrors
        detail = " ".join(str(exc).split())[:200]
        raise EchoError(f"{path}: not a readable CSV table of thresholds ({detail}); {_RECALIBRATE}") from None
    absent = [c for c in ("class", "threshold") if c not in table.columns]
    if absent:
        raise EchoError(f"{path}: not a thresholds table (no {' or '.join(absent)} column; columns: "
                        f"{', '.join(map(str, table.columns))[:200]}); {_RECALIBRATE}")
    return table


def _check_weights(path: Path, table: pd.DataFrame, folder: str | Path) -> None:
    recorded = set(table[_WEIGHTS_COLUMN].str.strip()) - {""} if _WEIGHTS_COLUMN in table else set()
    if not recorded:
        logger.warning("%s records no weights digest (an older echoengine wrote it), so it cannot be checked "
                       "against the model's weights; %s to record it", path, _RECALIBRATE)
        return
    current = models_digest(folder)
    if recorded != {current}:
        raise EchoError(f"{path}: the thresholds were calibrated for other weights ({', '.join(sorted(recorded))}; "
                        f"the model's are {current}); {_RECALIBRATE} {folder} DATA")
