"""``echoengine reviews compare``: two models on the reviewed detections neither trained on, side by side.

The store's reviewed events (:mod:`echoengine.service.reviewed`), less the
recordings either bundle trained on (their ``splits.csv``) and those of the
exports given to leave out, are scored by both bundles
(:mod:`echoengine.service.rescore`), each with the options the store served it
with (:func:`echoengine.service.recorded.scoring_of`: its ``--threshold``,
``--top-n``, windows and species filters; a bundle never served: its own
``thresholds.csv``, else 0.5, and ``detect``'s defaults; options given
explicitly override both). For each species and model, at those thresholds:

``detections``
    held-out events whose truth for the species is known and whose score reaches the threshold;
``precision``
    the share of them that are the species (true / detections);
``recall``
    the share of the events that are the species (confirmed or corrected to it) that it detects.

An event's truth for a species is :func:`echoengine.service.reviewed.truth`:
one species per event; a rejected event is known only not to be its
detected species. The last row, ``all``, pools every species (micro averages; its ``reviewed`` counts events
once, its ``true`` the events that are one of the species).

Examples
--------
>>> events = pd.DataFrame({"species": ["owl", "owl", "owl"], "verdict": ["confirmed", "rejected", "corrected"],
...                        "label": ["owl", "", "wren"]})
>>> counts(np.array([0.9, 0.8, 0.2]), truth(events, "owl"), 0.5)
{'reviewed': 3, 'true': 1, 'detections': 2, 'found': 1}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import EchoError
from echoengine.service.recorded import scoring_of
from echoengine.service.rescore import ScoredEvents, score_events
from echoengine.service.reviewed import held_out, read_store, truth

__all__ = ["Comparison", "compare_models", "counts"]


def counts(scores: np.ndarray, known: np.ndarray, threshold: float) -> dict:
    """Events with a known truth, those that are the species, those detected (score NaN: not), those detected and
    true."""
    keep = ~np.isnan(known)
    detected, true = np.nan_to_num(scores[keep], nan=-1.0) >= threshold, known[keep] == 1
    return {"reviewed": int(keep.sum()), "true": int(true.sum()), "detections": int(detected.sum()),
            "found": int((detected & true).sum())}


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def _side(scored: ScoredEvents, events: pd.DataFrame, species: list[str]) -> pd.DataFrame:
    """One model's counts per species, and over all of them (``all``), with precision and recall."""
    rows = [{"species": name, "threshold": scored.threshold(name),
             **counts(scored.of(name), truth(events, name), scored.threshold(name))} for name in species]
    rows.append({"species": "all", "threshold": math.nan, "reviewed": len(events),
                 **{key: sum(row[key] for row in rows) for key in ("true", "detections", "found")}})
    table = pd.DataFrame(rows)
    table["precision"] = [_ratio(f, d) for f, d in zip(table["found"], table["detections"], strict=True)]
    known = [name in scored.classes or name == "all" for name in table["species"]]
    table["recall"] = [_ratio(f, t) if k else math.nan for f, t, k in zip(table["found"], table["true"], known,
                                                                          strict=True)]
    return table


def _table(old: ScoredEvents, new: ScoredEvents, events: pd.DataFrame) -> pd.DataFrame:
    species = [name for name in dict.fromkeys([*old.classes, *new.classes]) if (~np.isnan(truth(events, name))).any()]
    sides = {"old": _side(old, events, species), "new": _side(new, events, species)}
    table = sides["old"][["species", "reviewed", "true"]].copy()
    for side, rows in sides.items():
        for column in ("threshold", "detections", "found", "precision", "recall"):
            table[f"{side}_{column}"] = rows[column]
    return table


@dataclass
class Comparison:
    """The per-species table of two models (``old_*`` and ``new_*`` columns) and what it was computed on."""

    table: pd.DataFrame
    names: tuple[str, str]
    events: int
    recordings: int
    left_out: int
    scoring: tuple[str, str] = ("", "")  # how each model was judged (Scoring.source)

    def text(self) -> str:
        """The table as ``echoengine reviews compare`` prints it."""
        shown = self.table.copy()
        for side in ("old", "new"):
            shown[f"{side} P"] = [f"{p:.3f} ({f}/{d})" if d else "-" for p, f, d in
                                  zip(shown[f"{side}_precision"], shown[f"{side}_found"], shown[f"{side}_detections"],
                                      strict=True)]
            shown[f"{side} R"] = [f"{r:.3f}" if not math.isnan(r) else "-" for r in shown[f"{side}_recall"]]
            shown[f"{side} t"] = [f"{t:.3f}" if not math.isnan(t) else "-" for t in shown[f"{side}_threshold"]]
        columns = ["species", "reviewed", "true", "old t", "old P", "old R", "new t", "new P", "new R"]
        head = (f"old: {self.names[0]}\n  judged with {self.scoring[0]}\nnew: {self.names[1]}\n  judged with "
                f"{self.scoring[1]}\n{self.events} held-out reviewed detections of {self.recordings} recordings "
                f"({self.left_out} left out: trained on, or in --exclude exports); t = the threshold used, "
                "P = precision there (true / detections), R = recall of the true ones\n")
        return head + shown[columns].to_string(index=False)


def compare_models(old: str | Path, new: str | Path, store: str | Path, *, db: str | None = None,
                   since: str | None = None, until: str | None = None,
                   exclude: tuple[str | Path, ...] = (), overrides: dict | None = None) -> Comparison:
    """Score the store's held-out reviewed detections with both bundles; per species precision, recall, counts.

    Each bundle is judged with the options the store served it with; ``overrides`` (``threshold``, ``top_n``,
    ``overlap``; see :func:`~echoengine.service.recorded.scoring_of`) replace them for both.

    Raises
    ------
    EchoError
        A bundle or store that cannot be read, options that do not fit a bundle, or no reviewed detection neither
        bundle trained on.
    """
    scorings = [scoring_of(bundle, store, db, overrides=overrides) for bundle in (old, new)]
    events, left_out = held_out(read_store(store, db, since=since, until=until), bundles=[old, new],
                                exclude=exclude)
    if events.empty:
        raise EchoError(f"--store {store}: no reviewed detection left to compare on ({left_out} are of recordings "
                        "a bundle trained on or of --exclude exports)")
    scored = [score_events(bundle, events, scoring.options) for bundle, scoring in zip((old, new), scorings,
                                                                                         strict=True)]
    readable = ~np.isnan(scored[0].scores).all(axis=1) & ~np.isnan(scored[1].scores).all(axis=1)
    if not readable.all():  # recordings that could not be decoded (warned about): their events are left out
        events = events[readable].reset_index(drop=True)
        for side in scored:
            side.scores = side.scores[readable]
    table = _table(*scored, events)
    return Comparison(table, (str(old), str(new)), len(events), events["recording"].nunique(), left_out,
                      (scorings[0].source, scorings[1].source))
