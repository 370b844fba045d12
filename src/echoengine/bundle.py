"""The model bundle loaded with its model: what training writes and everything downstream loads.

The files of a bundle, their names and paths, and the reading of its config
and classes are :mod:`echoengine.layout`'s (no torch there); this module
adds the model: saving and loading weights (``torch.load(weights_only=True)``:
a file never runs code) and :func:`load_bundle`.

Examples
--------
>>> import tempfile
>>> from echoengine.config import EchoConfig
>>> from echoengine.layout import write_metadata
>>> folder = write_metadata(tempfile.mkdtemp(), EchoConfig(), ["frog", "owl"])
>>> save_atomic(build_model(EchoConfig().model, 2).state_dict(), Path(folder) / WEIGHTS_FILE)
>>> load_bundle(folder).classes
['frog', 'owl']
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import torch

from echoengine.errors import EchoError
from echoengine.files import write_atomic
from echoengine.layout import CLASSES_FILE, TAXONOMY_FILE, WEIGHTS_FILE, Bundle, BundleFiles, read_bundle
from echoengine.models import build_model
from echoengine.models.hierarchy import NodeModels, modelled_nodes, node_paths
from echoengine.taxonomy import read_taxonomy

__all__ = ["load_bundle", "load_state", "save_atomic"]


def save_atomic(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves half a file.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / WEIGHTS_FILE
    >>> save_atomic({"bias": torch.zeros(2)}, path)
    >>> load_state(path)["bias"].tolist()
    [0.0, 0.0]
    """
    write_atomic(path, lambda temporary: torch.save(obj, temporary))


def load_state(path: str | Path, *, what: str = "the weights", map_location: str | torch.device = "cpu"):
    """Read a file written by :func:`save_atomic`: tensors, numbers, strings and containers, never code.

    ``torch.load(weights_only=True)`` refuses any other pickled object, so a
    crafted ``weights.pt`` or ``checkpoint.pt`` cannot run anything.

    Raises
    ------
    EchoError
        The file is missing, truncated, or holds something else: one line naming it.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        detail = " ".join(str(exc).split())[:300]  # one line
        raise EchoError(f"{path}: cannot load {what} ({detail})") from None


def _check_class_count(folder: Path, classes: list[str], state) -> None:
    """Refuse a ``classes.txt`` whose length is not the number of outputs of the weights.

    Every head ends in a layer whose bias has one value per class: the last
    ``head.*.bias`` of the state dict.
    """
    if not isinstance(state, dict):
        return  # not a state dict: reported when it is loaded
    biases = [value for key, value in state.items() if key.startswith("head.") and key.endswith(".bias")]
    if not biases or getattr(biases[-1], "ndim", 0) != 1 or len(biases[-1]) == len(classes):
        return  # nothing to compare, or it matches
    raise EchoError(f"{BundleFiles(folder).classes}: lists {len(classes)} classes but {WEIGHTS_FILE} has "
                    f"{len(biases[-1])} outputs; the class list does not belong to these weights: put back the "
                    f"{CLASSES_FILE} written with them (one class per output, in output order)")



def _build(bundle: Bundle) -> torch.nn.Module:
    """The model of a bundle's config, untrained: a per-node model's from its ``taxonomy.csv`` too."""
    model = dataclasses.replace(bundle.config.model, pretrained=False)
    if bundle.config.taxonomy.hierarchy != "per-node" or bundle.config.taxonomy.node:
        return build_model(model, len(bundle.classes))
    taxonomy = read_taxonomy(bundle.files.taxonomy)
    if taxonomy is None:
        raise EchoError(f"{bundle.path}: a per-node model needs its {TAXONOMY_FILE} (the tree of its classes)")
    taxonomy = taxonomy.restrict(bundle.classes, where=str(bundle.files.taxonomy))
    nodes = modelled_nodes(taxonomy.nodes())
    paths = node_paths(nodes, bundle.classes, {label: taxonomy.full_lineage(label) for label in bundle.classes})
    return NodeModels([build_model(model, len(children)) for _, children in nodes], paths)


def load_bundle(folder: str | Path, *, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by :func:`echoengine.training.fit` (or a per-node model's, :mod:`echoengine.hierfit`).

    Raises
    ------
    EchoError
        The folder is not a complete bundle.
    """
    bundle = read_bundle(folder)
    folder, config, classes, files = bundle.path, bundle.config, bundle.classes, bundle.files
    # the architecture only: the weights come from the bundle, never from a download
    model = _build(bundle)
    state = load_state(files.weights)
    if not isinstance(state, dict):
        raise EchoError(f"{files.weights}: cannot load the weights (a {type(state).__name__}, not a "
                        "state dict of tensors)")
    _check_class_count(folder, classes, state)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:400]  # one line
        raise EchoError(f"{files.weights}: cannot load the weights ({detail})") from None
    return Bundle(folder, config, classes, model.to(device, memory_format=torch.channels_last).eval())
