"""A taxonomy above the labels: each label's lineage (family, genus, ...) and the probabilities of every rank.

A :class:`Taxonomy` holds, for each label (the lowest rank, e.g. a species),
its names at the ranks above it, highest first. It comes from a nested
dataset folder (``DATA/Ranidae/Lithobates/green-frog/x.mp3``) or a CSV with a
``label`` column and one column per rank, and a bundle keeps it in
``taxonomy.csv``. Whatever the model (one over the labels, one per node of
the tree, or one trained at every rank), its output is a probability per
label; a rank's probabilities are their sums over the labels below each of
its names (:meth:`Taxonomy.rank_probabilities`), so the ranks always agree.

Examples
--------
>>> tree = Taxonomy(("family", "genus"), {"green-frog": ("Ranidae", "Lithobates"),
...                                        "bullfrog": ("Ranidae", "Lithobates"),
...                                        "tree-frog": ("Hylidae", "Hyla")})
>>> tree.names("genus")
['Hyla', 'Lithobates']
>>> probs = np.array([[0.41, 0.52, 0.07]])  # bullfrog, green-frog, tree-frog (the classes' order)
>>> [(c.rank, c.name, round(c.probability, 2)) for c in tree.lineage_of(probs[0], ["bullfrog", "green-frog",
...                                                                                  "tree-frog"])]
[('family', 'Ranidae', 0.93), ('genus', 'Lithobates', 0.93), ('label', 'green-frog', 0.52)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine.errors import DataError
from echoengine.files import write_csv_atomic
from echoengine.layout import TAXONOMY_FILE
from echoengine.taxonomy_config import RESERVED_RANKS, rank_name_problem

__all__ = ["LABEL_RANK", "RESERVED_RANKS", "RankCall", "Taxonomy", "below_node", "bundle_taxonomy", "check_rank_name",
           "deepest_sure", "label_table", "node_lineage", "read_taxonomy"]

#: The name of the lowest rank: the labels the model is trained on.
LABEL_RANK = "label"
def check_rank_name(rank: str) -> None:
    """Refuse a rank name that is not a plain word, or that would clash with an output column.

    >>> check_rank_name("family")
    >>> check_rank_name("score")
    Traceback (most recent call last):
    ...
    echoengine.errors.DataError: taxonomy: the rank 'score' ... a rank is named by a word that is not one of ...
    """
    problem = rank_name_problem(rank)
    if problem:
        raise DataError(f"taxonomy: {problem}")


def _check_name(name: str, label: str) -> None:
    """Refuse a name that cannot be a folder of its own or that changes when read back (spaces around it)."""
    if not name or name != name.strip() or "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"taxonomy: the name {name!r} (in the lineage of {label!r}) is empty, has spaces around it, "
                        "holds a / or \\, or is . or ..: rename it")


@dataclass(frozen=True)
class RankCall:
    """A name at one rank with its probability: one step of a file's or a detection's lineage."""

    rank: str
    name: str
    probability: float


@dataclass(frozen=True)
class Taxonomy:
    """The ranks above the labels (highest first) and each label's names at them.

    Parameters
    ----------
    ranks : tuple of str
        The ranks above the labels, highest first (``("family", "genus")``).
    lineages : mapping of str to tuple of str
        Each label's name at every rank of ``ranks``.

    Raises
    ------
    DataError
        A lineage of the wrong length, an empty name, or a name with two
        parents (a genus under two families): the tree is not a tree.
    """

    ranks: tuple[str, ...]
    lineages: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(self.ranks))
        object.__setattr__(self, "lineages", {str(k): tuple(map(str, v)) for k, v in self.lineages.items()})
        for rank in self.ranks:
            check_rank_name(rank)
        for label, lineage in self.lineages.items():
            if len(lineage) != len(self.ranks):
                raise DataError(f"taxonomy: {label!r} has the lineage {list(lineage)}, not one name for each of "
                                f"the ranks {', '.join(self.ranks)}")
            for name in (label, *lineage):
                _check_name(name, label)
        for depth, rank in enumerate(self.ranks):
            parents: dict[str, tuple[str, ...]] = {}
            for label, lineage in self.lineages.items():
                parent = parents.setdefault(lineage[depth], lineage[:depth])
                if parent != lineage[:depth]:
                    raise DataError(f"taxonomy: the {rank} {lineage[depth]!r} sits under both {'/'.join(parent)} "
                                    f"and {'/'.join(lineage[:depth])} (at {label!r}); a name has one parent")

    # ---- reading and writing ----------------------------------------------
    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, where: str = "taxonomy") -> Taxonomy:
        """A taxonomy from a table: a ``label`` column and one column per rank, highest first.

        >>> Taxonomy.from_frame(pd.DataFrame({"label": ["owl"], "class": ["Aves"]})).lineages
        {'owl': ('Aves',)}
        """
        if LABEL_RANK not in frame.columns:
            raise DataError(f"{where}: no 'label' column (columns: {', '.join(map(str, frame.columns))})")
        ranks = tuple(str(column) for column in frame.columns if column != LABEL_RANK)
        if not ranks:
            raise DataError(f"{where}: no rank columns beside 'label' (e.g. label,family,genus)")
        frame = frame.astype(str)
        repeated = frame[LABEL_RANK][frame[LABEL_RANK].duplicated()].unique().tolist()
        if repeated:
            raise DataError(f"{where}: label(s) listed twice: {', '.join(repeated[:5])}")
        lineages = {row[0]: tuple(row[1:]) for row in frame[[LABEL_RANK, *ranks]].itertuples(index=False)}
        try:
            return cls(ranks, lineages)
        except DataError as exc:
            raise DataError(f"{where}: {str(exc).removeprefix('taxonomy: ')}") from None

    @classmethod
    def read(cls, path: str | Path) -> Taxonomy:
        """Read a taxonomy CSV (``label`` and one column per rank); a one-line DataError when it is not one."""
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the taxonomy ({' '.join(str(exc).split())[:200]})") from None
        return cls.from_frame(frame, where=str(path))

    def frame(self) -> pd.DataFrame:
        """The taxonomy as a table: ``label`` and the ranks, one row per label in sorted order."""
        rows = [(label, *self.lineages[label]) for label in sorted(self.lineages)]
        return pd.DataFrame(rows, columns=[LABEL_RANK, *self.ranks])

    def write(self, path: str | Path) -> Path:
        """Write :meth:`frame` as CSV (atomically)."""
        write_csv_atomic(path, self.frame(), index=False)
        return Path(path)

    # ---- the tree -----------------------------------------------------------
    @property
    def all_ranks(self) -> tuple[str, ...]:
        """The ranks and then ``"label"``."""
        return (*self.ranks, LABEL_RANK)

    def full_lineage(self, label: str) -> tuple[str, ...]:
        """A label's names at every rank, ending with the label itself."""
        return (*self.lineages[label], label)

    def path_of(self, label: str) -> str:
        """``Ranidae/Lithobates/green-frog``."""
        return "/".join(self.full_lineage(label))

    def names(self, rank: str) -> list[str]:
        """The names at ``rank``, sorted."""
        depth = self._depth(rank)
        return sorted({self.full_lineage(label)[depth] for label in self.lineages})

    def restrict(self, labels: Sequence[str], *, where: str = "taxonomy") -> Taxonomy:
        """The taxonomy of these labels alone; a DataError names the labels it does not place."""
        missing = sorted(set(labels) - set(self.lineages))
        if missing:
            raise DataError(f"{where}: no lineage for the label(s) {', '.join(missing[:8])}"
                            f"{' ...' if len(missing) > 8 else ''}")
        return Taxonomy(self.ranks, {label: self.lineages[label] for label in labels})

    def below(self, lineage: tuple[str, ...]) -> Taxonomy:
        """The taxonomy of the labels below a node (``("Ranidae",)``; ``()``: all of them).

        >>> Taxonomy(("genus",), {"a1": ("A",), "b1": ("B",)}).below(("A",)).lineages
        {'a1': ('A',)}
        """
        return self.restrict(sorted(label for label in self.lineages
                                    if self.full_lineage(label)[:len(lineage)] == lineage))

    def nodes(self) -> list[tuple[tuple[str, ...], list[str]]]:
        """The internal nodes with their children, top down: ``[((), families), (("Ranidae",), genera), ...]``.

        A node's lineage is the names above its children; the last level's
        children are labels. Nodes with one child are listed too (their
        child's probability is 1).
        """
        found: dict[tuple[str, ...], set[str]] = {}
        for label in self.lineages:
            lineage = self.full_lineage(label)
            for depth in range(len(lineage)):
                found.setdefault(lineage[:depth], set()).add(lineage[depth])
        return [(node, sorted(found[node])) for node in sorted(found, key=lambda node: (len(node), node))]

    def membership(self, rank: str, classes: Sequence[str]) -> np.ndarray:
        """For each class (a label, in output order), the index of its name at ``rank`` in :meth:`names`."""
        depth = self._depth(rank)
        index = {name: i for i, name in enumerate(self.names(rank))}
        return np.array([index[self.full_lineage(label)[depth]] for label in classes], dtype=np.int64)

    def _depth(self, rank: str) -> int:
        if rank not in self.all_ranks:
            raise DataError(f"taxonomy: no rank {rank!r}; ranks: {', '.join(self.all_ranks)}")
        return self.all_ranks.index(rank)

    # ---- probabilities -------------------------------------------------------
    def rank_probabilities(self, probs: np.ndarray, classes: Sequence[str], rank: str) -> np.ndarray:
        """The probability of each name at ``rank`` (columns in :meth:`names` order): sums of its labels'.

        >>> tree = Taxonomy(("genus",), {"a1": ("A",), "a2": ("A",), "b1": ("B",)})
        >>> tree.rank_probabilities(np.array([[0.2, 0.3, 0.5]]), ["a1", "a2", "b1"], "genus").tolist()
        [[0.5, 0.5]]
        """
        members = np.eye(len(self.names(rank)))[self.membership(rank, classes)]  # (classes, names), one-hot
        return np.asarray(probs, dtype=np.float64) @ members

    def lineage_of(self, probs: np.ndarray, classes: Sequence[str]) -> list[RankCall]:
        """The lineage of one file's (or detection's) most probable label, top down, with each rank's probability.

        A rank's probability is the sum of its labels' (the label's genus
        holds the label and its siblings), so it never falls down the lineage.

        >>> tree = Taxonomy(("genus",), {"a1": ("A",), "a2": ("A",), "b1": ("B",)})
        >>> [(c.name, round(c.probability, 2)) for c in tree.lineage_of(np.array([.3, .3, .4]), ["a1", "a2", "b1"])]
        [('B', 0.4), ('b1', 0.4)]
        """
        probs = np.asarray(probs, dtype=np.float64)
        best = self.full_lineage(classes[int(np.argmax(probs))])
        calls = []
        for depth, rank in enumerate(self.all_ranks):
            below = [self.full_lineage(label)[depth] == best[depth] for label in classes]
            calls.append(RankCall(rank, best[depth], float(probs[np.array(below, dtype=bool)].sum())))
        return calls

    # ---- counts ----------------------------------------------------------------
    def tree_text(self, table: pd.DataFrame, units: tuple[str, str] = ("file", "recording")) -> str:
        """The tree with the files and source recordings (``group``) under each name, one line per node
        (``units`` name them: photos are ``("image", "group")``).

        >>> tree = Taxonomy(("genus",), {"a1": ("A",), "b1": ("B",)})
        >>> print(tree.tree_text(pd.DataFrame({"label": ["a1", "a1", "b1"], "group": ["x", "y", "z"]})))
        A (genus): 2 files, 2 recordings
          a1: 2 files, 2 recordings
        B (genus): 1 file, 1 recording
          b1: 1 file, 1 recording
        """
        paths = table["label"].map(lambda label: self.full_lineage(label) if label in self.lineages else None)
        lines = []
        for node, children in self.nodes():
            for child in children:
                lineage = (*node, child)
                below = paths.map(lambda path, lineage=lineage: path is not None and path[:len(lineage)] == lineage)
                rank = self.all_ranks[len(node)]
                files, recordings = int(below.sum()), table.loc[below.to_numpy(), "group"].nunique()
                lines.append((lineage, f"{'  ' * len(node)}{child}{'' if rank == LABEL_RANK else f' ({rank})'}: "
                                       f"{_count(files, units[0])}, {_count(recordings, units[1])}"))
        return "\n".join(line for _, line in sorted(lines))


def deepest_sure(calls: Sequence[RankCall], min_confidence: float) -> RankCall | None:
    """The deepest step of a lineage whose probability reaches ``min_confidence``; None when none does.

    >>> calls = [RankCall("genus", "A", 0.93), RankCall("label", "a1", 0.41)]
    >>> deepest_sure(calls, 0.9).name, deepest_sure(calls, 0.0).name, deepest_sure(calls, 0.95)
    ('A', 'a1', None)
    """
    sure = [call for call in calls if call.probability >= min_confidence]
    return sure[-1] if sure else None


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def read_taxonomy(path: str | Path) -> Taxonomy | None:
    """The taxonomy in a ``taxonomy.csv``, or None when the file is not there."""
    return Taxonomy.read(path) if Path(path).is_file() else None


def bundle_taxonomy(bundle) -> Taxonomy | None:
    """The taxonomy of a bundle's classes (its ``taxonomy.csv``), or None.

    None for a built-in, and for a model of one node of a tree (``--node``,
    a per-node model's ``nodes/``): its classes are the node's children, not
    labels of the tree.
    """
    if getattr(bundle, "builtin", None) is not None or bundle.path is None:
        return None
    taxonomy = read_taxonomy(Path(bundle.path) / TAXONOMY_FILE)
    if taxonomy is None or not set(bundle.classes) <= set(taxonomy.lineages):
        return None
    return taxonomy.restrict(list(bundle.classes))


def label_table(table: pd.DataFrame, root: str | Path, source: str, *, ranks: Sequence[str] = (),
                node: str = "") -> tuple[pd.DataFrame, Taxonomy | None]:
    """A dataset's table relabelled by its taxonomy, and the taxonomy of its labels (None below a ``node``).

    Parameters
    ----------
    table : DataFrame
        The catalog (``path``, ``label``, ``group``) of the dataset at ``root``.
    source : str
        ``"folders"``: a file's folders below ``root`` are its lineage and
        the label is the folder below the ranks (files further down belong to
        it; a file above that depth is labelled by its own folder); else a
        taxonomy CSV (:meth:`Taxonomy.read`), which must place every label.
    ranks : sequence of str
        The folder ranks' names (default: ``rank1``, ``rank2``, ... as deep as
        the shallowest file's folder allows).
    node : str
        Keep the files below this node (``Ranidae/Lithobates``), labelled by
        its children (:func:`below_node`): a model of that node alone.

    Examples
    --------
    >>> table = pd.DataFrame({"path": ["/d/Ranidae/Lithobates/green-frog/1.wav"], "label": ["Ranidae"],
    ...                       "group": ["1"]})
    >>> table, tree = label_table(table, "/d", "folders", ranks=["family", "genus"])
    >>> table["label"].tolist(), tree.lineages
    (['green-frog'], {'green-frog': ('Ranidae', 'Lithobates')})
    """
    if source == "folders":
        table, taxonomy = _folder_lineages(table, Path(root), tuple(ranks))
    else:
        taxonomy = Taxonomy.read(source)
        if node:  # the labels below the node must be placed; the others are left out anyway
            return _one_node(table, taxonomy, node), None
        labelled = table["label"].astype(str) != ""
        taxonomy = taxonomy.restrict(sorted(set(table.loc[labelled, "label"])), where=str(source))
    return (_one_node(table, taxonomy, node), None) if node else (table, taxonomy)


def _one_node(table: pd.DataFrame, taxonomy: Taxonomy, node: str) -> pd.DataFrame:
    """The rows below ``node`` for a model of that node alone: refused when it has fewer than two children."""
    below = below_node(table, taxonomy, node)
    if below["label"].nunique() < 2:
        raise DataError(f"--node {node}: its files have {below['label'].nunique()} child class(es) "
                        f"({', '.join(sorted(below['label'].unique())) or 'none'}); a model needs two or more")
    return below


def _folder_lineages(table: pd.DataFrame, root: Path, ranks: tuple[str, ...]) -> tuple[pd.DataFrame, Taxonomy]:
    folders = [Path(path).parent.relative_to(root.absolute()).parts for path in table["path"]]
    depths = [len(parts) for parts in folders if parts]
    if not depths:
        raise DataError(f"{root}: no files in folders to read a taxonomy from")
    levels = len(ranks) if ranks else min(depths) - 1
    if levels < 1:
        raise DataError(f"{root}: --taxonomy folders needs files in nested folders (family/genus/species/...); "
                        f"the shallowest file lies {min(depths)} folder(s) down")
    ranks = ranks or tuple(f"rank{i + 1}" for i in range(levels))
    lineages: dict[str, tuple[str, ...]] = {}
    labels = []
    if max(depths) <= levels:  # a flat dataset read by a model of a taxonomy: each file's folder is its label
        return table.assign(label=[parts[-1] if parts else "" for parts in folders]), Taxonomy(ranks, {})
    for path, parts in zip(table["path"], folders, strict=True):
        if 0 < len(parts) <= levels:
            raise DataError(f"{path}: lies {len(parts)} folder(s) below {root}, above the label's folder ("
                            f"{levels + 1} down, below the ranks {', '.join(ranks)}): move it into a label's folder")
        if not parts:
            labels.append("")  # unlabelled, as in any dataset
            continue
        labels.append(parts[levels])
        known = lineages.setdefault(parts[levels], parts[:levels])
        if known != parts[:levels]:
            raise DataError(f"{path}: the label {parts[levels]!r} is also under {'/'.join(known)}; a label has "
                            "one lineage")
    return table.assign(label=labels), Taxonomy(ranks, lineages)


def node_lineage(node: str) -> tuple[str, ...]:
    """``"Ranidae/Lithobates"`` -> ``("Ranidae", "Lithobates")``; ``"/"`` is the root.

    >>> node_lineage("/Ranidae/Lithobates/"), node_lineage("/")
    (('Ranidae', 'Lithobates'), ())
    """
    return tuple(part for part in node.strip("/").split("/") if part)


def below_node(table: pd.DataFrame, taxonomy: Taxonomy, node: str | tuple[str, ...]) -> pd.DataFrame:
    """The rows below ``node`` (``"Ranidae/Lithobates"`` or its names), labelled by its children.

    >>> tree = Taxonomy(("genus",), {"a1": ("A",), "a2": ("A",), "b1": ("B",)})
    >>> below_node(pd.DataFrame({"label": ["a1", "b1", "a2"]}), tree, "A")["label"].tolist()
    ['a1', 'a2']
    >>> below_node(pd.DataFrame({"label": ["a1", "b1"]}), tree, ())["label"].tolist()
    ['A', 'B']
    """
    lineage = node if isinstance(node, tuple) else node_lineage(node)
    known = dict(taxonomy.nodes())
    if lineage not in known:
        inner = ", ".join("/".join(name) for name in known if name)[:300]
        raise DataError(f"--node {node}: not an internal node of the taxonomy (nodes: {inner or 'the root alone'})")
    depth = len(lineage)
    rows = table["label"].map(lambda label: label in taxonomy.lineages
                              and taxonomy.full_lineage(label)[:depth] == lineage).to_numpy()
    child = table.loc[rows, "label"].map(lambda label: taxonomy.full_lineage(label)[depth])
    return table.loc[rows].assign(label=child).reset_index(drop=True)
