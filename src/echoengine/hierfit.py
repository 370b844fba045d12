"""Training with a taxonomy: flat, joint (a loss at every rank) or per-node (one model per node of the tree).

The training side of ``--taxonomy`` and ``--hierarchy`` (:class:`echoengine.config.TaxonomyConfig`).
Every model of a taxonomy outputs probabilities over the labels (the
leaves), so what scores, thresholds and exports a flat model works unchanged:

- ``flat``: one ordinary model over the labels;
- ``joint``: one model over the labels whose loss adds, at every rank
  above them, the negative log of the rank's marginal probability
  (:class:`echoengine.models.hierarchy.JointLoss`; linear heads on
  embeddings: :func:`echoengine.headfit.fit_logistic`);
- ``per-node``: an ordinary bundle per internal node with two or more
  children, in ``nodes/<lineage>/`` (``nodes/root/``), trained on the files
  below the node labelled by its children, with balanced class weights
  unless asked otherwise; the bundle's own model is
  :class:`echoengine.models.hierarchy.NodeModels` over them (its weights
  are theirs, so :func:`echoengine.bundle.load_bundle` needs only
  ``taxonomy.csv``).

Every bundle of a taxonomy keeps it in ``taxonomy.csv`` and says where it
came from in ``taxonomy.source``: ``"folders"`` or ``"taxonomy.csv"`` (that
file; a user's CSV path is never kept). ``--node LINEAGE`` trains one node
alone: a flat bundle whose classes are the node's children (``--node /``:
the root's).

Examples
--------
>>> result = fit_model(train, val, classes, config, "bundle", taxonomy=tree)  # doctest: +SKIP
>>> sorted(p.name for p in Path("bundle/nodes").iterdir())  # doctest: +SKIP
['Hylidae', 'Ranidae', 'root']
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from echoengine import sources
from echoengine.bundle import load_bundle, save_atomic
from echoengine.config import EchoConfig
from echoengine.errors import EchoError
from echoengine.layout import BundleFiles, selection_history, write_metadata
from echoengine.models.hierarchy import NodeModels, modelled_nodes, node_paths
from echoengine.taxonomy import Taxonomy, below_node, node_lineage
from echoengine.training import TrainResult, fit_and_refit

__all__ = ["bundle_taxonomy_config", "check_hierarchy", "dataset_taxonomy", "fit_model", "memberships",
           "node_name", "trained_nodes", "write_taxonomy"]


def check_hierarchy(config: EchoConfig) -> None:
    """Refuse what training with a taxonomy cannot do, in one line."""
    options = config.taxonomy
    if not options.uses_taxonomy:
        return
    if config.model.multilabel:
        raise EchoError("a taxonomy (--taxonomy, --hierarchy, --node) works with single-label models: a multi-label "
                        "model scores each class alone; train it without one")
    if options.node or options.hierarchy == "flat" or not config.convex_head() or config.model.head_name != "mlp":
        return
    if options.hierarchy == "per-node":
        raise EchoError("--hierarchy per-node fits a linear head per node on embeddings, not the mlp head (its size "
                        "is chosen per node): use --head linear, or --hierarchy flat")
    raise EchoError("--hierarchy joint trains a linear head on embeddings (or any epoch-trained model), not the mlp "
                    "head: use --head linear, or --hierarchy per-node or flat")


def dataset_taxonomy(data: str | Path, config: EchoConfig) -> Taxonomy | None:
    """The taxonomy of a dataset's labels (None without one); with ``--node``, of the labels below the node."""
    if not config.taxonomy.uses_taxonomy:
        return None
    node = config.taxonomy.node
    whole = config.replace(taxonomy={"node": "", "source": config.taxonomy.lineage_source})
    taxonomy = sources.labels_table(data, whole)[1]
    if not node:
        return taxonomy
    return taxonomy.below(node_lineage(node))


def node_name(lineage: tuple[str, ...]) -> str:
    """A node's ``--node`` name: ``Ranidae/Lithobates``, ``/`` for the root."""
    return "/".join(lineage) or "/"


def bundle_taxonomy_config(config: EchoConfig, taxonomy: Taxonomy | None = None) -> EchoConfig:
    """The config a bundle of a taxonomy saves: ``taxonomy.source`` is ``"folders"`` or ``"taxonomy.csv"``, and
    folder ranks are named (those inferred from the folders' depth too), so that data is read back alike."""
    if not config.taxonomy.uses_taxonomy:
        return config
    folders = config.taxonomy.lineage_source == "folders"
    source = "folders" if folders else BundleFiles(".").taxonomy.name
    ranks = list(taxonomy.ranks) if folders and taxonomy is not None else list(config.taxonomy.ranks)
    return config.replace(taxonomy={"source": source, "ranks": ranks})


def write_taxonomy(folder: str | Path, taxonomy: Taxonomy | None) -> None:
    """Write ``taxonomy.csv`` into ``folder`` (nothing without a taxonomy)."""
    if taxonomy is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        taxonomy.write(BundleFiles(folder).taxonomy)


def memberships(taxonomy: Taxonomy, classes: list[str]) -> list[np.ndarray]:
    """Each class's name index at every rank above the classes (the joint loss's masks)."""
    return [taxonomy.membership(rank, classes) for rank in taxonomy.ranks]


def trained_nodes(taxonomy: Taxonomy) -> list[tuple[tuple[str, ...], list[str]]]:
    """The internal nodes that need a model (two or more children), top down."""
    return modelled_nodes(taxonomy.nodes())


def fit_model(train: pd.DataFrame, val: pd.DataFrame, classes: list[str], config: EchoConfig, out: str | Path, *,
              taxonomy: Taxonomy | None, resume: bool = False, progress: bool = True,
              log: Callable[[str], None] = print, boxes: pd.DataFrame | None = None) -> TrainResult:
    """Fit the model ``config.taxonomy.hierarchy`` asks for into the bundle ``out``, ``taxonomy.csv`` written first.

    ``config`` is the bundle's (:func:`bundle_taxonomy_config`); without a
    taxonomy this is :func:`echoengine.training.fit_and_refit`.
    """
    out = Path(out)
    write_taxonomy(out, taxonomy)
    hierarchy = config.taxonomy.hierarchy
    if taxonomy is None or config.taxonomy.node or hierarchy == "flat":
        return fit_and_refit(train, val, classes, config, out, resume=resume, progress=progress, log=log, boxes=boxes)
    taxonomy = taxonomy.restrict(classes)
    if hierarchy == "joint":
        log(f"joint model: a loss at the labels and at each rank of {', '.join(taxonomy.ranks)}")
        return fit_and_refit(train, val, classes, config, out, resume=resume, progress=progress, log=log,
                             memberships=memberships(taxonomy, classes))
    return _fit_per_node(train, val, classes, config, out, taxonomy, resume=resume, progress=progress, log=log)


def _fit_per_node(train: pd.DataFrame, val: pd.DataFrame, classes: list[str], config: EchoConfig, out: Path,
                  taxonomy: Taxonomy, *, resume: bool, progress: bool, log: Callable[[str], None]) -> TrainResult:
    """A bundle per node with two or more children, then the top bundle: their :class:`NodeModels`."""
    nodes = trained_nodes(taxonomy)
    if not nodes:
        raise EchoError("--hierarchy per-node: no node of the taxonomy has two children; train it flat")
    files = BundleFiles(out)
    write_metadata(out, config, classes)  # first: a killed run resumes from it
    results = []
    for lineage, children in nodes:
        folder = files.node(lineage)
        name = node_name(lineage)
        node_config = config.replace(taxonomy={"hierarchy": "flat", "node": name})
        node_train, node_val = below_node(train, taxonomy, lineage), below_node(val, taxonomy, lineage)
        log(f"node {name}: {len(children)} classes ({', '.join(children[:6])}{' ...' if len(children) > 6 else ''})"
            f", {len(node_train)} training files")
        if resume and _node_finished(folder):
            log(f"node {name}: finished before, kept")
            results.append(TrainResult(folder, [], _best_epoch(folder), load_bundle(folder).model))
            continue
        write_taxonomy(folder, taxonomy.below(lineage))  # as --node NAME writes it
        try:
            result = fit_and_refit(node_train, node_val, children, node_config, folder,
                                   resume=resume and _node_started(folder), progress=progress, log=log)
        except EchoError as exc:
            raise EchoError(f"node {name} ({folder}): {exc}") from None
        BundleFiles(folder).checkpoint.unlink(missing_ok=True)  # finished: nothing to resume (_node_finished)
        _plot_history(folder)
        results.append(result)
    model = NodeModels([r.model for r in results], node_paths(nodes, classes, _paths(taxonomy, classes))).eval()
    save_atomic(model.state_dict(), files.weights)
    _copy_history(BundleFiles(files.node(nodes[0][0])), files)
    return TrainResult(out, results[0].history, results[0].best_epoch, model)


def _paths(taxonomy: Taxonomy, classes: list[str]) -> dict[str, tuple[str, ...]]:
    return {label: taxonomy.full_lineage(label) for label in classes}


def _node_started(folder: Path) -> bool:
    """A node's training to resume: a checkpoint, or a selection run's history without its refit's."""
    files = BundleFiles(folder)
    return files.checkpoint.is_file() or (files.selection_history.is_file() and not files.history.is_file())


def _node_finished(folder: Path) -> bool:
    """A node bundle with its weights and nothing left to resume (its checkpoint goes when it is finished)."""
    files = BundleFiles(folder)
    return all(path.is_file() for path in (files.weights, files.classes, files.history)) and not _node_started(folder)


def _best_epoch(folder: Path) -> int:
    """The epoch a finished node bundle's selection chose (1 for a head fitted full-batch)."""
    history = pd.read_csv(selection_history(folder))
    return int(history.loc[history["val_loss"].idxmin(), "epoch"]) if history["val_loss"].notna().any() else 1


def _plot_history(folder: Path) -> None:
    """A node's training curves, train against validation per epoch, in its ``plots/training.png`` as any
    bundle's (its test part is the top bundle's, so it has no report of its own)."""
    from echoengine import plots

    history = pd.read_csv(selection_history(folder))
    if len(history):
        plots.plot_history(history, BundleFiles(folder).training_plot, best_epoch=_best_epoch(folder))


def _copy_history(node: BundleFiles, top: BundleFiles) -> None:
    """The top bundle's training curves: those of its first node (the root's, when it has two children)."""
    for source, target in ((node.history, top.history), (node.selection_history, top.selection_history)):
        if source.is_file():
            shutil.copyfile(source, target)
        else:
            target.unlink(missing_ok=True)
