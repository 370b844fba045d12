"""How good a model of a taxonomy is at every rank: accuracy, macro-F1, hierarchical F1, near misses.

A model's label probabilities summed over each name of a rank
(:meth:`echoengine.taxonomy.Taxonomy.rank_probabilities`) give its
prediction at that rank. :func:`rank_metrics` scores every rank, the
hierarchical F1 (the share of the true lineage the predicted label's lineage
shares, as Kiritchenko et al.'s hP/hR: all lineages have one name per rank)
and, of the wrong labels, the share still within the right name of each rank
above ("the right genus, the wrong species").

Examples
--------
>>> from echoengine.taxonomy import Taxonomy
>>> tree = Taxonomy(("genus",), {"a1": ("A",), "a2": ("A",), "b1": ("B",)})
>>> probs = np.array([[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1]])
>>> result = rank_metrics(["a1", "b1", "a1"], probs, ["a1", "a2", "b1"], tree)
>>> result["ranks"]["genus"]["accuracy"], result["ranks"]["label"]["accuracy"], result["mistakes_within"]
(1.0, 0.6666666666666666, {'genus': 1.0})
>>> round(result["hierarchical_f1"], 3)
0.833
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

from echoengine import plots
from echoengine.taxonomy import LABEL_RANK, Taxonomy

__all__ = ["rank_figures", "rank_metrics", "rank_row", "rank_text"]


def rank_metrics(labels: Sequence[str], probabilities: np.ndarray, classes: Sequence[str], taxonomy: Taxonomy) -> dict:
    """Accuracy, macro-F1 and the confusion matrix at every rank, the hierarchical F1 and the near misses.

    Parameters
    ----------
    labels : sequence of str
        Each file's true label (files of labels the taxonomy does not place are left out).
    probabilities : ndarray, shape (files, classes)
        The model's label probabilities, columns in ``classes`` order.

    Returns
    -------
    dict
        ``ranks``: per rank ``accuracy``, ``macro_f1``, ``names`` and
        ``confusion_matrix`` (rows true, columns predicted);
        ``hierarchical_f1``; ``mistakes_within``: per rank above the labels,
        the share of the wrong labels whose prediction has the true name
        there; ``n`` files scored.
    """
    labels = np.asarray(labels, dtype=object)
    placed = np.array([label in taxonomy.lineages for label in labels], dtype=bool)
    labels, probabilities = labels[placed], np.asarray(probabilities)[placed]
    ranks = {}
    for rank in taxonomy.all_ranks:
        names = taxonomy.names(rank)
        depth = taxonomy.all_ranks.index(rank)
        index = {name: i for i, name in enumerate(names)}
        truth = np.array([index[taxonomy.full_lineage(label)[depth]] for label in labels], dtype=np.int64)
        guess = taxonomy.rank_probabilities(probabilities, classes, rank).argmax(axis=1) if len(labels) else truth
        everything = list(range(len(names)))
        ranks[rank] = {"accuracy": float(np.mean(truth == guess)) if len(labels) else float("nan"),
                       "macro_f1": float(f1_score(truth, guess, labels=sorted(set(truth)), average="macro",
                                                  zero_division=0)) if len(labels) else float("nan"),
                       "names": names,
                       "confusion_matrix": confusion_matrix(truth, guess, labels=everything).tolist()}
    best = [classes[i] for i in probabilities.argmax(axis=1)] if len(labels) else []
    shared = [_shared(taxonomy.full_lineage(true), taxonomy.full_lineage(guess)) for true, guess in zip(labels, best)]
    wrong = [(true, guess) for true, guess in zip(labels, best) if true != guess]
    within = {rank: float(np.mean([taxonomy.full_lineage(t)[depth] == taxonomy.full_lineage(g)[depth]
                                   for t, g in wrong])) if wrong else float("nan")
              for depth, rank in enumerate(taxonomy.ranks)}
    return {"ranks": ranks, "hierarchical_f1": float(np.mean(shared)) if shared else float("nan"),
            "mistakes_within": within, "n": len(labels)}


def _shared(true: tuple[str, ...], guess: tuple[str, ...]) -> float:
    """The share of the true lineage the guessed one holds (from the top: a lineage is a path)."""
    common = 0
    for one, other in zip(true, guess):
        if one != other:
            break
        common += 1
    return common / len(true)


def rank_text(result: dict) -> str:
    """The rank metrics as lines of a report.

    >>> print(rank_text({"ranks": {"genus": {"accuracy": 1.0, "macro_f1": 1.0}}, "hierarchical_f1": 0.8,
    ...                  "mistakes_within": {"genus": 0.5}}))
      rank          accuracy macro-F1
      genus           1.0000   1.0000
      hierarchical F1 0.8000
      of the wrong labels, within the right genus: 50.0%
    """
    lines = [f"  {'rank':<13} {'accuracy':>8} {'macro-F1':>8}"]
    lines += [f"  {rank:<13} {m['accuracy']:>8.4f} {m['macro_f1']:>8.4f}" for rank, m in result["ranks"].items()]
    lines.append(f"  hierarchical F1 {result['hierarchical_f1']:.4f}")
    lines += [f"  of the wrong labels, within the right {rank}: {share:.1%}"
              for rank, share in result["mistakes_within"].items() if share == share]
    return "\n".join(lines)


def rank_row(result: dict) -> dict[str, float]:
    """The rank metrics as scalars of a row (a cross-validation fold's): accuracy and macro-F1 of every rank
    above the labels, and the hierarchical F1.

    >>> rank_row({"ranks": {"genus": {"accuracy": 0.9, "macro_f1": 0.8}, "label": {"accuracy": 0.7, "macro_f1": 0.6}},
    ...           "hierarchical_f1": 0.85})
    {'genus_accuracy': 0.9, 'genus_macro_f1': 0.8, 'hierarchical_f1': 0.85}
    """
    row = {f"{rank}_{name}": metrics[name] for rank, metrics in result["ranks"].items() if rank != LABEL_RANK
           for name in ("accuracy", "macro_f1")}
    return {**row, "hierarchical_f1": result["hierarchical_f1"]}


def rank_figures(result: dict, plots_dir: str | Path) -> list[Path]:
    """A confusion matrix per rank above the labels: ``plots/confusion_<rank>.png``."""
    written = []
    for rank, metrics in result["ranks"].items():
        if rank == LABEL_RANK:
            continue  # the label's is the report's own confusion matrix
        path = Path(plots_dir) / f"confusion_{rank}.png"
        title = f"{rank}: accuracy {metrics['accuracy']:.1%}"
        written.append(plots.plot_confusion(np.array(metrics["confusion_matrix"]), metrics["names"], path,
                                            title=title))
    return written
