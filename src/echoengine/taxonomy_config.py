"""The ``[taxonomy]`` section: the taxonomy above a dataset's labels, and how a model uses it.

Examples
--------
>>> TaxonomyConfig(hierarchy="joint").lineage_source
'folders'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from echoengine.input_config import require

__all__ = ["HIERARCHIES", "RESERVED_RANKS", "TaxonomyConfig", "rank_name_problem"]

#: Names a rank may not take: the columns of the tables it joins (events, predictions, catalogs).
RESERVED_RANKS = frozenset({"file", "path", "start", "end", "label", "score", "mean_score", "windows", "low_freq",
                            "high_freq", "species", "probability", "rank", "ranks", "top_k", "taxon", "taxon_rank",
                            "taxon_score", "group", "fold", "part"})
_RANK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def rank_name_problem(rank: object) -> str:
    """What is wrong with a rank's name (empty: nothing): it must be a plain word that is no output column.

    >>> rank_name_problem("family"), rank_name_problem("genus_score")[:25]
    ('', "the rank 'genus_score' ca")
    """
    if (isinstance(rank, str) and _RANK_NAME.fullmatch(rank) and rank not in RESERVED_RANKS
            and not rank.endswith(("_score", "_probability"))):
        return ""
    return (f"the rank {rank!r} cannot be used: a rank is named by a word that is not one of "
            f"{', '.join(sorted(RESERVED_RANKS))} (letters, digits, _ and -, starting with a letter, not ending in "
            "_score or _probability), e.g. family or genus")


#: How a model uses a taxonomy (``taxonomy.hierarchy``).
HIERARCHIES = ("flat", "per-node", "joint")


@dataclass(frozen=True)
class TaxonomyConfig:
    """The taxonomy above the labels, and how the model uses it.

    Parameters
    ----------
    source : str
        Where the lineage of each label comes from: empty (no taxonomy, unless
        ``ranks``, ``hierarchy`` or ``node`` ask for one: then ``"folders"``), ``"folders"`` (the
        path of a file below the dataset folder, e.g.
        ``Ranidae/Lithobates/green-frog/x.mp3``: the last folder is the
        label) or a CSV file with a ``label`` column and one column per rank,
        highest first. A bundle keeps its taxonomy in ``taxonomy.csv`` and
        says ``"folders"`` or ``"taxonomy.csv"`` (that file) here.
    ranks : tuple of str
        Names of the folder ranks, highest first (default ``rank1``, ``rank2``, ...).
    hierarchy : str
        ``"flat"``: one model over the labels, whose probabilities sum up the
        tree; ``"per-node"``: one model per internal node of the tree (its
        children's softmax), a label's probability the product down the tree;
        ``"joint"``: one model over the labels trained with a loss at every rank.
    node : str
        Train the model of one node alone (``Ranidae/Lithobates``): its
        children are the classes, as the seed pipeline's per-taxon classifiers.

    Examples
    --------
    >>> TaxonomyConfig(hierarchy="per-node").uses_taxonomy, TaxonomyConfig().uses_taxonomy
    (True, False)
    """

    source: str = field(default="", metadata={
        "help": "the taxonomy above the labels: 'folders' (DATA/family/genus/species/...) or a CSV with a label "
                "column and one column per rank, highest first", "flag": "--taxonomy", "metavar": "FILE",
        "commands": ("inspect", "train", "cv")})
    ranks: tuple[str, ...] = field(default=(), metadata={
        "help": "names of the folder ranks, highest first (default rank1,rank2,...)", "metavar": "RANKS",
        "commands": ("inspect", "train", "cv")})
    hierarchy: str = field(default="flat", metadata={
        "help": "with a taxonomy: one model (flat), one model per node of the tree (per-node) or one model with "
                "a loss at every rank (joint)", "choices": HIERARCHIES})
    node: str = field(default="", metadata={
        "help": "train the model of one node of the taxonomy alone (e.g. Ranidae/Lithobates)", "metavar": "LINEAGE",
        "commands": ("train",)})

    def __post_init__(self) -> None:
        require(self.hierarchy in HIERARCHIES,
                f"taxonomy.hierarchy must be one of {', '.join(HIERARCHIES)}, got {self.hierarchy!r}")
        for rank in self.ranks:
            require(not rank_name_problem(rank), f"taxonomy.ranks: {rank_name_problem(rank)}")
        require(not self.ranks or self.source in ("", "folders"), "taxonomy.ranks names the ranks of nested "
                "folders; a taxonomy CSV names its own in its header (label,family,genus): drop --ranks")
        require(len(set(self.ranks)) == len(self.ranks), f"taxonomy.ranks repeats a name: {list(self.ranks)}")

    @property
    def uses_taxonomy(self) -> bool:
        """Whether the labels have a taxonomy above them (a source, rank names, a hierarchy other than flat, a node)."""
        return bool(self.source or self.ranks or self.hierarchy != "flat" or self.node)

    @property
    def lineage_source(self) -> str:
        """``source``, or ``"folders"`` when a taxonomy is asked for without one."""
        return self.source or ("folders" if self.uses_taxonomy else "")
