"""What ``predict`` gives: each file's probabilities, its best classes and, with a taxonomy, its lineage.

Examples
--------
>>> result = PredictResult(pd.DataFrame({"file": ["a.wav"]}), np.array([[0.2, 0.8]]), ["owl", "wren"])
>>> result.rows(top_k=1)[0]["species"], result.text(top_k=2)
('wren', 'a.wav  wren (80.0%)   next: owl 20.0%')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.taxonomy import LABEL_RANK, RankCall, Taxonomy, deepest_sure

__all__ = ["PredictResult"]


@dataclass
class PredictResult:
    """Class probabilities of audio files: one row per readable file, and the files that could not be read.

    ``table`` has the columns ``file``, ``species`` and ``probability`` (of
    the most probable class, 0-1); ``probabilities`` is (files, classes).
    With a ``taxonomy``, each row also holds its lineage (:meth:`lineages`)
    and names the deepest rank whose probability reaches ``min_confidence``.
    """

    table: pd.DataFrame
    probabilities: np.ndarray
    classes: list[str]
    errors: list[str] = field(default_factory=list)
    taxonomy: Taxonomy | None = None
    min_confidence: float = 0.0

    def lineages(self) -> list[list[RankCall]]:
        """Each file's most probable lineage, top down (:meth:`echoengine.taxonomy.Taxonomy.lineage_of`)."""
        if self.taxonomy is None:
            return [[RankCall(LABEL_RANK, name, probability)] for ((name, probability),) in self.top(1)]
        return [self.taxonomy.lineage_of(row, self.classes) for row in self.probabilities]

    def top(self, k: int = 1) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable classes of each file, with their probabilities."""
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.classes[i], float(row[i])) for i in ranks] for row, ranks in zip(self.probabilities, order)]

    def rows(self, top_k: int = 3) -> list[dict]:
        """Each file's ``top_k`` classes in dicts (``file``, ``species``, ``probability``, ``top_k``), in percent.

        With a taxonomy, ``ranks`` holds the lineage of the most probable
        label (``{"family": {"label": "Ranidae", "probability": 97.0}, ...,
        "label": {...}}``), and ``species``, ``probability`` and ``rank`` name
        its deepest rank whose probability reaches ``min_confidence``
        (``""``, None and ``""`` when none does).
        """
        rows = []
        for path, ranks, lineage in zip(self.table["file"], self.top(top_k), self.lineages(), strict=True):
            top = [{"species": name, "probability": round(100 * probability, 2)} for name, probability in ranks]
            row = {"file": path, **top[0], "top_k": top}
            if self.taxonomy is not None:
                sure = deepest_sure(lineage, self.min_confidence)
                row.update(species=sure.name if sure else "", rank=sure.rank if sure else "",
                           probability=round(100 * sure.probability, 2) if sure else None,
                           ranks={c.rank: {"label": c.name, "probability": round(100 * c.probability, 2)}
                                  for c in lineage})
            rows.append(row)
        return rows

    def text(self, top_k: int = 3, form: str = "table") -> str:
        """The predictions as ``echoengine predict`` prints them.

        ``form`` is ``"table"`` (a line per file: its best class and the next
        ones), ``"json"`` (:meth:`rows`) or ``"csv"`` (a row per file and rank).
        """
        rows = self.rows(top_k)
        if form == "json":
            return json.dumps(rows, indent=2, ensure_ascii=False)
        if form == "csv":
            return self._csv(rows)
        width = max([len(Path(r["file"]).name) for r in rows] + [4])
        lines = []
        for r in rows:
            others = ", ".join(f"{t['species']} {t['probability']:.1f}%" for t in r["top_k"] if t["species"] != r[
                "species"])
            lines.append(f"{Path(r['file']).name:<{width}}  {_called(r, self.min_confidence)}"
                         + (f"   next: {others}" if others else ""))
        return "\n".join(lines)

    def _csv(self, rows: list[dict]) -> str:
        """A row per file and top-k class; with a taxonomy, each file's lineage in a column per rank, and with
        ``min_confidence`` its deepest rank that sure (``taxon``, ``taxon_rank``, ``taxon_probability``, as
        detect's events name it; empty when no rank is)."""
        above = self.taxonomy.ranks if self.taxonomy is not None else ()
        sure = ("taxon", "taxon_rank", "taxon_probability") if above and self.min_confidence else ()
        ranked = [{"file": r["file"], "rank": rank + 1, "species": t["species"], "probability": t["probability"],
                   **{name: r["ranks"][name]["label"] for name in above},
                   **{f"{name}_probability": r["ranks"][name]["probability"] for name in above},
                   **({name: r[key] for name, key in zip(sure, ("species", "rank", "probability"), strict=True)}
                      if sure else {})}
                  for r in rows for rank, t in enumerate(r["top_k"])]
        columns = ["file", "rank", "species", "probability", *above, *(f"{name}_probability" for name in above),
                   *sure]
        return pd.DataFrame(ranked, columns=columns).to_csv(index=False).removesuffix("\n")


def _called(row: dict, min_confidence: float) -> str:
    """A row's name as the table shows it: ``owl (93.1%)``, ``Strix (genus, 97.0%)``, or what no rank reached."""
    if row.get("rank", LABEL_RANK) == LABEL_RANK:
        return f"{row['species']} ({row['probability']:.1f}%)"
    if row["rank"]:
        return f"{row['species']} ({row['rank']}, {row['probability']:.1f}%)"
    top_rank, top = next(iter(row["ranks"].items()))
    return f"no rank reaches {100 * min_confidence:.0f}% (best {top['label']}, {top_rank}, {top['probability']:.1f}%)"
