"""From window scores to events: thresholds, window detections, and their merging into events.

A window detects a class when its score reaches the class's threshold (one
for all, else the bundle's calibrated ``thresholds.csv``, else 0.5),
optionally only among the window's ``top_n`` classes and the classes included
and not excluded; detections of one class in overlapping or touching windows
(or closer than ``gap`` seconds) merge into one event with its start, end, max
and mean score. Pure table functions: :mod:`echoengine.detection` runs them
on the recorded window scores.

Examples
--------
>>> import pandas as pd
>>> hits = pd.DataFrame({"file": ["a.wav"] * 2, "start": [0.0, 5.0], "end": [5.0, 10.0],
...                      "label": ["frog"] * 2, "score": [0.7, 0.9]})
>>> merge_events(hits)[["start", "end", "score", "windows"]].values.tolist()
[[0.0, 10.0, 0.9, 2.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from echoengine.errors import EchoError
from echoengine.layout import Bundle
from echoengine.taxonomy import LABEL_RANK, RankCall, Taxonomy, deepest_sure
from echoengine.thresholds import DEFAULT_THRESHOLD, load_thresholds

__all__ = ["check_species", "detectable", "detection_thresholds", "event_lineage", "kept_scores", "lineage_columns",
           "merge_events", "weigh_events", "window_detections", "with_lineage"]


def window_detections(scores: pd.DataFrame, classes: Sequence[str], *, thresholds: np.ndarray, top_n: int = 0,
                      include: Sequence[str] = (), exclude: Sequence[str] = ()) -> pd.DataFrame:
    """Window-level detections: (file, start, end, label, score) where a class reaches its threshold.

    Parameters
    ----------
    scores : DataFrame
        One row per window: ``file``, ``start``, ``end`` and one column of scores per class.
    thresholds : ndarray, shape (n_classes,)
    top_n : int
        Only the window's ``top_n`` best classes may detect (0: all).
    include, exclude : sequence of str
        Classes to keep only / to drop.
    """
    classes = list(classes)
    check_species(classes, include, exclude)
    matrix = scores[classes].to_numpy(dtype=np.float64) if len(scores) else np.zeros((0, len(classes)))
    hit = (matrix >= thresholds[None, :]) & detectable(matrix, classes, top_n=top_n, include=include, exclude=exclude)
    rows, columns = np.nonzero(hit)
    return pd.DataFrame({
        "file": scores["file"].to_numpy()[rows], "start": scores["start"].to_numpy()[rows],
        "end": scores["end"].to_numpy()[rows], "label": np.array(classes, dtype=object)[columns],
        "score": matrix[rows, columns],
    })


def detectable(matrix: np.ndarray, classes: Sequence[str], *, top_n: int = 0, include: Sequence[str] = (),
               exclude: Sequence[str] = ()) -> np.ndarray:
    """Where a window's class may detect (windows, classes): among its ``top_n`` best (0: all), included, not excluded.

    Examples
    --------
    >>> detectable(np.array([[0.9, 0.6], [0.2, 0.7]]), ["owl", "wren"], top_n=1, exclude=["wren"]).tolist()
    [[True, False], [False, False]]
    """
    mask = np.ones(matrix.shape, dtype=bool)
    if top_n:
        ranks = np.argsort(np.argsort(-matrix, axis=1, kind="stable"), axis=1, kind="stable")
        mask &= ranks < top_n
    include, exclude = set(include), set(exclude)  # a location filter excludes thousands of BirdNET's species
    mask &= np.array([(not include or c in include) and c not in exclude for c in classes], dtype=bool)[None, :]
    return mask


def check_species(classes: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> None:
    """An EchoError naming any species to include or exclude that is not among the model's classes."""
    unknown = sorted((set(include) | set(exclude)) - set(classes))
    if unknown:
        raise EchoError(f"unknown species {', '.join(unknown)}: the model's classes are {', '.join(classes)}")


def merge_events(detections: pd.DataFrame, *, gap: float = 0.0) -> pd.DataFrame:
    """Merge window detections of one class in one file that overlap, touch, or are closer than ``gap`` seconds.

    Returns
    -------
    DataFrame
        ``file, start, end, label, score`` (the max), ``mean_score``, ``windows``,
        sorted by file, start and label.
    """
    columns = ["file", "start", "end", "label", "score", "mean_score", "windows"]
    if detections.empty:
        return pd.DataFrame(columns=columns)
    events = []
    ordered = detections.sort_values(["file", "label", "start"], kind="stable")
    for (file, label), group in ordered.groupby(["file", "label"], sort=False):
        current = None
        for start, end, score in zip(group["start"], group["end"], group["score"], strict=True):
            if current is not None and start <= current["end"] + gap + 1e-9:
                current["end"] = max(current["end"], end)
                current["scores"].append(score)
                continue
            if current is not None:
                events.append(current)
            current = {"file": file, "start": start, "end": end, "label": label, "scores": [score]}
        events.append(current)
    table = pd.DataFrame([{**{k: e[k] for k in ("file", "start", "end", "label")}, "score": max(e["scores"]),
                           "mean_score": float(np.mean(e["scores"])), "windows": len(e["scores"])} for e in events])
    return table.sort_values(["file", "start", "label"], kind="stable").reset_index(drop=True)[columns]


def detection_thresholds(bundles: Sequence[Bundle], threshold: float | None, classes: list[str]) -> np.ndarray:
    """Each class's threshold: ``threshold`` for all, else the bundle's calibrated ``thresholds.csv``, else 0.5
    (a built-in's: its own, e.g. BirdNET-Analyzer's min_conf 0.1)."""
    if threshold is not None:
        return np.full(len(classes), threshold)
    if bundles[0].builtin is not None:
        return np.full(len(classes), bundles[0].builtin.min_conf)
    root = bundles[0].path.parent if len(bundles) > 1 else bundles[0].path
    calibrated = load_thresholds(root, classes)
    return calibrated if calibrated is not None else np.full(len(classes), DEFAULT_THRESHOLD)


def kept_scores(bundles: Sequence[Bundle], keep_scores: float | None) -> float:
    """The least score ``scores.parquet`` keeps: ``keep_scores``, else a built-in's own (BirdNET's 6,522 species:
    0.01, whose scores in a window are mostly near 0), else 0 (every score).

    Examples
    --------
    >>> kept_scores([], 0.2)
    0.2
    """
    if keep_scores is not None:
        return keep_scores
    return bundles[0].builtin.keep_scores if bundles and bundles[0].builtin is not None else 0.0


def weigh_events(events: pd.DataFrame, weights: dict[str, float], classes: Sequence[str],
                 thresholds: np.ndarray) -> pd.DataFrame:
    """``events`` with the scores of the classes in ``weights`` multiplied by their weight (an occurrence table's
    down-weighting), and those of weight 0 or no longer reaching their class's threshold left out.

    Examples
    --------
    >>> events = pd.DataFrame({"label": ["owl", "owl", "wren"], "score": [0.9, 0.4, 0.4], "mean_score": 0.4})
    >>> weigh_events(events, {"owl": 0.5}, ["owl", "wren"], np.array([0.3, 0.3]))["score"].tolist()
    [0.45, 0.4]
    """
    if not weights or not len(events):
        return events
    factor = events["label"].map(weights).fillna(1.0).to_numpy(dtype=np.float64)
    threshold = events["label"].map(dict(zip(classes, thresholds, strict=True))).to_numpy(dtype=np.float64)
    weighed = events.assign(score=events["score"] * factor, mean_score=events["mean_score"] * factor)
    return weighed[(factor > 0) & (weighed["score"].to_numpy() >= threshold)].reset_index(drop=True)


def lineage_columns(taxonomy: Taxonomy, *, min_confidence: float = 0.0) -> list[str]:
    """The columns :func:`with_lineage` adds: a name and a score per rank above the labels, then the taxon's.

    >>> lineage_columns(Taxonomy(("genus",), {"a1": ("A",)}), min_confidence=0.9)
    ['genus', 'genus_score', 'taxon', 'taxon_rank', 'taxon_score']
    """
    columns = [column for rank in taxonomy.ranks for column in (rank, f"{rank}_score")]
    return columns + (["taxon", "taxon_rank", "taxon_score"] if min_confidence else [])


def with_lineage(events: pd.DataFrame, scores: pd.DataFrame, classes: Sequence[str], taxonomy: Taxonomy, *,
                 min_confidence: float = 0.0) -> pd.DataFrame:
    """Events with their species' lineage: each rank's name and score, and the deepest rank that is sure enough.

    A rank's score is the best, over the event's windows, of the sum of the
    scores of the labels below the event's name at that rank (softmax
    scores: the probability of that genus, family, ...). With
    ``min_confidence``, ``taxon`` names the deepest rank of the lineage whose
    score reaches it (the species when its own score does; empty when none).

    Examples
    --------
    >>> tree = Taxonomy(("genus",), {"a1": ("A",), "a2": ("A",)})
    >>> scores = pd.DataFrame({"file": ["f"], "start": [0.0], "end": [3.0], "a1": [0.45], "a2": [0.45]})
    >>> events = pd.DataFrame({"file": ["f"], "start": [0.0], "end": [3.0], "label": ["a1"], "score": [0.45]})
    >>> with_lineage(events, scores, ["a1", "a2"], tree, min_confidence=0.8)[["genus", "genus_score", "taxon"]]
      genus  genus_score taxon
    0     A          0.9     A
    """
    events = events.reset_index(drop=True)
    matrix = scores[list(classes)].to_numpy(dtype=np.float64) if len(scores) else np.zeros((0, len(classes)))
    inside = _event_windows(events, scores)
    added: dict[str, list] = {}
    for depth, rank in enumerate(taxonomy.ranks):
        column = {name: i for i, name in enumerate(taxonomy.names(rank))}
        summed = taxonomy.rank_probabilities(matrix, classes, rank)
        names = [taxonomy.full_lineage(label)[depth] for label in events["label"]]
        added[rank] = names
        added[f"{rank}_score"] = [round(float(summed[rows, column[name]].max()), 4) if len(rows) else np.nan
                                  for name, rows in zip(names, inside, strict=True)]
    table = events.assign(**added)
    return _taxon(table, taxonomy, min_confidence) if min_confidence else table


def _event_windows(events: pd.DataFrame, scores: pd.DataFrame) -> list[np.ndarray]:
    """The rows of ``scores`` (windows, in time order per file) inside each event: found by bisection per file."""
    by_file = scores.groupby("file", sort=False).indices if len(scores) else {}
    starts, ends = scores["start"].to_numpy(dtype=np.float64), scores["end"].to_numpy(dtype=np.float64)
    found = []
    for file, start, end in zip(events["file"], events["start"], events["end"], strict=True):
        rows = by_file.get(file, np.zeros(0, dtype=np.int64))
        first = np.searchsorted(starts[rows], start - 1e-3, side="left")
        last = np.searchsorted(ends[rows], end + 1e-3, side="right")
        found.append(rows[first:max(first, last)])
    return found


def _taxon(events: pd.DataFrame, taxonomy: Taxonomy, min_confidence: float) -> pd.DataFrame:
    """The deepest rank of each event's lineage whose score reaches ``min_confidence`` (empty when none does)."""
    taxa, ranks, scores = [], [], []
    for row in events.to_dict("records"):
        steps = [RankCall(rank, row[rank], row[f"{rank}_score"]) for rank in taxonomy.ranks]
        sure = deepest_sure([*steps, RankCall(LABEL_RANK, row["label"], row["score"])], min_confidence)
        taxa.append(sure.name if sure else "")
        ranks.append(sure.rank if sure else "")
        scores.append(sure.probability if sure else np.nan)
    return events.assign(taxon=taxa, taxon_rank=ranks, taxon_score=scores)


def event_lineage(event: dict, taxonomy: Taxonomy | None) -> dict | None:
    """An event's lineage as JSON (``{"family": {"label": ..., "score": ...}, ..., "label": {...}}``), or None.

    ``event`` is a row of :func:`with_lineage`'s table (a dict).

    >>> tree = Taxonomy(("genus",), {"a1": ("A",)})
    >>> event_lineage({"label": "a1", "score": 0.4, "genus": "A", "genus_score": 0.9}, tree)
    {'genus': {'label': 'A', 'score': 0.9}, 'label': {'label': 'a1', 'score': 0.4}}
    """
    if taxonomy is None:
        return None
    ranks = {rank: {"label": str(event[rank]), "score": float(event[f"{rank}_score"])} for rank in taxonomy.ranks}
    return {**ranks, LABEL_RANK: {"label": str(event["label"]), "score": float(event["score"])}}
