"""Leak-free splits of a catalog: grouped by source recording, stratified by label.

Clips of one source recording (the catalog's ``group``) never sit on both
sides of a split. :func:`split` gives train / validation / test parts,
:func:`kfold` the folds of a cross-validation, :func:`split_groups` parts by
group alone (multi-label recordings). A class recorded once cannot be both
trained on and tested: it is trained on only, left out, or an error
(``data.sparse_classes``).

Examples
--------
>>> import pandas as pd
>>> table = pd.DataFrame({"path": [f"{i}.wav" for i in range(8)],
...                       "label": ["a", "b"] * 4, "group": ["g0", "g1", "g2", "g3"] * 2})
>>> kfold(table, folds=2, seed=0).tolist()
[1, 0, 0, 1, 1, 0, 0, 1]
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from echoengine.errors import DataError

__all__ = ["EXCLUDED", "TRAIN_ONLY", "kfold", "split", "split_groups"]

#: The fold of a row left out of cross-validation (``data.sparse_classes = "drop"``).
EXCLUDED = -1
#: The fold of a row trained on in every fold and never tested (``data.sparse_classes = "train"``).
TRAIN_ONLY = -2
logger = logging.getLogger("echoengine")


def split_groups(table: pd.DataFrame, *, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 0) -> np.ndarray:
    """Assign rows to ``"train"``, ``"val"`` and ``"test"`` by group only (multi-label recordings).

    Whole groups (source recordings) move together; fractions are of groups.

    Examples
    --------
    >>> table = pd.DataFrame({"group": [f"g{i}" for i in range(10)]})
    >>> sorted(pd.Series(split_groups(table, val_fraction=0.2, test_fraction=0.2)).value_counts().items())
    [('test', 2), ('train', 6), ('val', 2)]
    """
    groups = np.array(sorted(table["group"].unique()))
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test, n_val = round(test_fraction * len(groups)), round(val_fraction * len(groups))
    spare = len(groups) - 1  # one group trains, whatever the fractions
    n_test = min(max(n_test, int(test_fraction > 0)), spare)
    n_val = min(max(n_val, int(val_fraction > 0)), spare - n_test)
    part_of = {}
    for position, index in enumerate(order):
        part_of[groups[index]] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return table["group"].map(part_of).to_numpy()


def _classes_to_hold_out(table: pd.DataFrame, parts: int, purpose: str, sparse_classes: str,
                         fix: str = "") -> np.ndarray:
    """Check that every class can sit on both sides of a split; the rows that can.

    A class needs two source recordings to be both trained on and held out;
    with one, its rows are trained on only (``sparse_classes="train"``), left
    out (``"drop"``), or an error. A class with fewer recordings than
    ``parts`` is kept, with a warning that it misses some parts, ending in
    ``fix`` (``{fewest}``: the fewest recordings of such a class).
    """
    if table.empty:
        raise DataError(f"no samples to split for {purpose}")
    unlabelled = int((table["label"] == "").sum())
    if unlabelled:
        raise DataError(f"{unlabelled} sample(s) have no label; {purpose} needs a label for every sample")
    counts = table.groupby("label")["group"].nunique()
    single = counts[counts < 2]
    if len(single) and sparse_classes == "error":
        listing = ", ".join(f"{label!r}" for label in single.index)
        raise DataError(
            f"{purpose} needs at least 2 source recordings per class, to train on one and hold out another; "
            f"only 1 in: {listing}. Add recordings, train on them without testing them with data.sparse_classes = "
            "'train' (--sparse-classes train), or leave them out with --sparse-classes drop"
        )
    if len(single):
        what = "trained on but never tested" if sparse_classes == "train" else "left out"
        logger.warning("%s: %s (a single source recording): %s", purpose, what, ", ".join(single.index))
    few = counts[(counts >= 2) & (counts < parts)]
    if len(few):
        listing = ", ".join(f"{label} ({n})" for label, n in few.items())
        logger.warning("%s: fewer source recordings than %d parts, so missing from some: %s%s", purpose, parts, listing,
                       f"; {fix.format(fewest=few.min())}" if fix else "")
    return ~table["label"].isin(single.index).to_numpy()


def _stratified_group_parts(table: pd.DataFrame, parts: int, seed: int) -> np.ndarray:
    """Assign each row to one of ``parts`` folds, stratified by label and grouped by group."""
    n_groups = table["group"].nunique()
    if n_groups < parts:
        raise DataError(f"cannot make {parts} parts from {n_groups} source recording(s): add data or ask for fewer")
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    fold = np.empty(len(table), dtype=np.int64)
    with warnings.catch_warnings():  # "least populated class has only n members": reported above
        warnings.simplefilter("ignore", UserWarning)
        for index, (_, held_out) in enumerate(splitter.split(np.zeros(len(table)), table["label"], table["group"])):
            fold[held_out] = index
    return fold


def kfold(table: pd.DataFrame, *, folds: int, seed: int = 0, sparse_classes: str = "train") -> np.ndarray:
    """The fold (0 .. folds-1) of each row, stratified by label, grouped by source recording.

    The rows of a class with a single source recording get :data:`TRAIN_ONLY`
    (``sparse_classes="train"``: in the training part of every fold, never
    tested) or :data:`EXCLUDED` (``"drop"``: left out). A class
    with fewer source recordings than ``folds`` is kept, with a warning
    naming it and its recordings: it is missing from some folds.

    Raises
    ------
    DataError
        A class has a single source recording (and ``sparse_classes`` is
        ``"error"``), a sample has no label, or every class has fewer files
        than ``folds`` (folds cannot be stratified then; the message names
        the classes and the most folds possible).
    """
    purpose = f"{folds}-fold cross-validation"
    fix = "use fewer folds (--folds {fewest}, data.folds) for every class to be in every fold"
    keep = _classes_to_hold_out(table, folds, purpose, sparse_classes, fix)
    kept = table[keep]
    files, n_groups = kept.groupby("label").size(), kept["group"].nunique()
    if n_groups >= folds and (files < folds).all():  # StratifiedGroupKFold needs a class with a file per fold
        recordings = kept.groupby("label")["group"].nunique()
        listing = ", ".join(f"{label} ({recordings[label]} recordings, {n} files)" for label, n in files[:8].items())
        more = f" and {len(files) - 8} more" if len(files) > 8 else ""
        most = min(int(files.max()), n_groups)
        raise DataError(f"{purpose} needs a class with at least {folds} files to stratify the folds, but every class "
                        f"has fewer: {listing}{more}; use --folds {most} or fewer (data.folds), or add recordings")
    fold = np.full(len(table), TRAIN_ONLY if sparse_classes == "train" else EXCLUDED, dtype=np.int64)
    fold[keep] = _stratified_group_parts(kept, folds, seed)
    return fold


def split(
    table: pd.DataFrame,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    sparse_classes: str = "train",
) -> np.ndarray:
    """Assign each row to ``"train"``, ``"val"`` or ``"test"`` (``"excluded"``: left out).

    A class recorded once goes to ``"train"`` (``sparse_classes="train"``) or ``"excluded"`` (``"drop"``).

    Grouped by source recording and stratified by label: each class sends
    about its fractions of its recordings (drawn with the seed) to test and
    validation, and at least one recording to each when it has enough, so
    every class with 3 or more recordings is in all three parts. File
    fractions are met approximately, as whole recordings move together.

    Returns
    -------
    np.ndarray of str, shape (rows,)
    """
    parts = 1 + (val_fraction > 0) + (test_fraction > 0)
    keep = _classes_to_hold_out(table, parts, "a train/validation/test split", sparse_classes)
    kept = table[keep]
    # Each recording goes where its (majority) class sends it. A class sends its
    # share of recordings to test and to validation, and at least one to test
    # (from 2 recordings) and to validation (from 3), keeping one for training.
    majority = kept.groupby("group")["label"].agg(lambda labels: labels.value_counts().index[0])
    rng = np.random.default_rng(seed)
    part_of: dict[str, str] = {}
    for _, groups in sorted(majority.groupby(majority), key=lambda item: item[0]):
        recordings = sorted(groups.index)
        rng.shuffle(recordings)
        n = len(recordings)
        n_test = max(round(n * test_fraction), int(test_fraction > 0 and n >= 2))
        n_val = max(round(n * val_fraction), int(val_fraction > 0 and n >= 3))
        n_test, n_val = min(n_test, n - 1), min(n_val, max(n - 1 - n_test, 0))
        for i, group in enumerate(recordings):
            part_of[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    names = np.full(len(table), "train" if sparse_classes == "train" else "excluded", dtype=object)
    names[keep] = kept["group"].map(part_of).to_numpy()
    return names
