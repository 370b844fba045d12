"""The model a server runs: its bundle(s), scorer, thresholds and options, and its row in ``models``.

The scoring is :func:`echoengine.detection.score_file` and
:func:`echoengine.detection.file_events`, exactly what ``echoengine detect``
runs on each file, with ``detect``'s options (:class:`DetectOptions`) and the
bundle's calibrated thresholds unless one threshold is given.

A served model is registered by its fingerprint: the weights' hash, the
classes, the thresholds and the options that change detections. The same
bundle served again reuses its row; anything else adds a row, its
``version`` one more than the last of that name, so detections already
stored keep the model they came from.

Examples
--------
>>> fingerprint({"weights_hash": "8eaa55a578eb0f70", "classes": ["owl"], "thresholds": [0.5], "options": {}})
'05cb3c11bda5fdb1'
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from echoengine.api import load_bundles, read_bundles, use_onnx
from echoengine.detection import DetectOptions, check_windows, file_events, score_file, score_files
from echoengine.errors import AudioError, EchoError
from echoengine.events import check_species, detection_thresholds, weigh_events, with_lineage
from echoengine.layout import check_ensemble
from echoengine.occurrence import OccurrenceTable, Place, class_weights, unexpected_classes, week_of
from echoengine.photos import refuse_photo_model
from echoengine.scoring import ONNX, window_scorer
from echoengine.service.db import Database
from echoengine.service.schema import Model
from echoengine.taxonomy import Taxonomy, bundle_taxonomy
from echoengine.thresholds import models_digest

logger = logging.getLogger("echoengine")

__all__ = ["EVENT_OPTIONS", "PLACE_OPTIONS", "ServedModel", "changed_options", "describe_options", "fingerprint",
           "load_model", "load_registered", "prepare_model", "recorded_form", "with_recorded"]

#: The options of :class:`DetectOptions` that change which detections a recording gives.
EVENT_OPTIONS = ("overlap", "min_window", "threshold", "top_n", "include", "exclude", "merge_gap", "onnx")
#: ... and those that do only when set (a model registered before them keeps its fingerprint).
PLACE_OPTIONS = {"location_filter": None, "occurrence": ""}
TOP_SPECIES = 5


def fingerprint(identity: dict) -> str:
    """A short hash of a model's identity (JSON with sorted keys)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass
class ServedModel:
    """A loaded bundle (or CV ensemble) ready to score recordings, and its ``models`` row.

    Attributes
    ----------
    scorer : GraphScorer or TorchScorer
        Windows in, class scores out (:func:`echoengine.scoring.window_scorer`).
    thresholds : np.ndarray
        Each class's threshold.
    options : DetectOptions
        Windows, thresholds and species filters, as ``detect`` takes them.
    row : Model
        The row detections refer to (``row.id``, ``row.name``, ``row.version``).
    """

    scorer: Any
    thresholds: np.ndarray
    options: DetectOptions
    row: Model | None
    process: Any = None  # a ScorerProcess that scores instead of this process (echoengine serve starts one)
    builtin: Any = None  # the spec of a built-in bundle (echoengine.builtin), registered by its name
    taxonomy: Taxonomy | None = None  # the classes' lineages: each detection gets its genus, family, ...

    @property
    def classes(self) -> list[str]:
        """The model's classes, in output order."""
        return list(self.scorer.classes)

    def events(self, path: str | Path) -> tuple[pd.DataFrame, list[list[dict]]]:
        """The events of a recording (``file_events``' table) and the five best species of each."""
        if self.process is not None:
            (_, result), = self.process.events_of_many([path])
            if isinstance(result, str):
                raise AudioError(path, result)
            return result
        return self.events_of(score_file(self.scorer, path, self.options))

    def events_of_many(self, paths: list[str | Path]) -> Iterator[tuple[int, tuple | str]]:
        """:meth:`events` of several recordings scored together (their windows share batches, as in
        ``detect``): ``(index, (events, top species))``, or ``(index, reason)`` for one that does not decode,
        each as it finishes (all at the end when a scoring process scores them)."""
        if self.process is not None:
            yield from self.process.events_of_many(paths)
            return
        for index, scores in score_files(self.scorer, paths, self.options):
            yield index, scores if isinstance(scores, str) else self.events_of(scores)

    def where_and_when(self, events: pd.DataFrame, tops: list[list[dict]], *, lat: float | None, lon: float | None,
                       when: Any = None, site: str = "") -> tuple[pd.DataFrame, list[list[dict]]]:
        """A recording's events (and their top species) without the species not expected at its position and
        date, with the options' ``location_filter`` (an occurrence table's down-weighted ones with their scores
        multiplied, and kept if they still reach their threshold); all of them without it or without a position
        (an occurrence table's site, its sensor, stands for one)."""
        options = self.options
        located = lat is not None and lon is not None
        if options.location_filter is None or not (located or (site and options.occurrence)):
            return events, tops
        try:
            place = Place(float(lat) if located else None, float(lon) if located else None,
                          week_of(when) if when is not None else -1, options.location_filter,
                          _table(options.occurrence) if options.occurrence else None, site)
        except EchoError:  # a position out of range: the recording's events stay unfiltered
            return events, tops
        weights = dict(zip(self.classes, class_weights(self.classes, place), strict=True))
        events = events.assign(_row=np.arange(len(events)))  # which of ``tops`` each kept event's is
        events = weigh_events(events, {name: w for name, w in weights.items() if w < 1}, self.classes,
                              self.thresholds)
        kept = events.pop("_row").tolist()
        return events, [tops[i] for i in kept]

    def events_of(self, scores: pd.DataFrame) -> tuple[pd.DataFrame, list[list[dict]]]:
        """The events of a recording's window scores and the five best species of each."""
        events = file_events(scores, self.classes, self.scorer.config, thresholds=self.thresholds,
                             options=self.options)
        if self.taxonomy is not None:
            events = with_lineage(events, scores, self.classes, self.taxonomy)
        return events, [top_species(scores, self.classes, start, end) for start, end in
                        zip(events["start"], events["end"], strict=True)]


@functools.cache
def _table(path: str) -> OccurrenceTable:
    return OccurrenceTable.read(path)


def top_species(scores: pd.DataFrame, classes: list[str], start: float, end: float,
                k: int = TOP_SPECIES) -> list[dict]:
    """The ``k`` classes of highest score over the windows of an event (each class's max), best first.

    Examples
    --------
    >>> scores = pd.DataFrame({"start": [0.0, 5.0], "end": [5.0, 10.0], "owl": [0.9, 0.2], "wren": [0.1, 0.7]})
    >>> top_species(scores, ["owl", "wren"], 0.0, 5.0)
    [{'species': 'owl', 'score': 0.9}, {'species': 'wren', 'score': 0.1}]
    """
    inside = scores[(scores["start"] >= start - 1e-3) & (scores["end"] <= end + 1e-3)]
    best = inside[classes].max().sort_values(ascending=False, kind="stable").head(k)
    return [{"species": str(name), "score": round(float(value), 4)} for name, value in best.items()]


@dataclass
class ModelInputs:
    """What a server's own process needs of its model when a scoring process scores: no model, no torch."""

    classes: list[str]
    config: Any
    kind: str  # the scorer's kind: images, embeddings, waveforms or onnx

    @classmethod
    def of(cls, bundles: list, options: DetectOptions) -> ModelInputs:
        """The inputs of bundles read without their models (:func:`echoengine.layout.read_bundle`)."""
        check_ensemble(bundles)
        config = bundles[0].config
        return cls(bundles[0].classes, config, ONNX if options.onnx else config.model.kind.input)


def load_model(db: Database, bundle: str | Path, options: DetectOptions | None = None, *,
               model_here: bool = True) -> ServedModel:
    """Load a bundle (or a CV folder's ensemble), check the options against it, and register it in ``models``.

    With ``model_here=False`` the model is not loaded in this process (a
    :class:`~echoengine.service.scorer_process.ScorerProcess` will score):
    only its config and classes are read.

    Raises
    ------
    EchoError
        The bundle cannot be loaded, a species filter names no class, or the windows do not fit the model.
    """
    served, identity = prepare_model(bundle, options or DetectOptions(), model_here=model_here)
    spec = served.builtin
    name, path = (spec.name, spec.source) if spec else (Path(bundle).resolve().name, str(Path(bundle).resolve()))
    served.row = _register(db, name, path, identity)
    return served


def load_registered(row: Model, options: DetectOptions, *, model_here: bool = True) -> ServedModel:
    """A registered model loaded again from its bundle folder, with the scoring options it was registered with.

    ``options`` gives what does not change detections (batch size,
    workers); the rest comes from the row.

    Raises
    ------
    EchoError
        The bundle is gone, cannot be loaded, or has changed since it was
        registered (other weights, classes or thresholds): serving it again
        registers the change as a new version.
    """
    try:
        served, identity = prepare_model(row.path, with_recorded(options, row.options), model_here=model_here)
    except EchoError as exc:
        raise EchoError(f"model {row.name}/{row.version} cannot be loaded from {row.path} ({exc})") from None
    if fingerprint(identity) != row.fingerprint:
        raise EchoError(f"model {row.name}/{row.version}: the bundle at {row.path} has changed since it was "
                        "registered (other weights, classes or thresholds); serve it again to register the change")
    served.row = row
    return served


def with_recorded(options: DetectOptions, recorded: dict, *, keep: Collection[str] = ()) -> DetectOptions:
    """``options`` with the scoring options a ``models`` row recorded (:data:`EVENT_OPTIONS`, and the place
    options set), but those in ``keep``.

    Examples
    --------
    >>> chosen = with_recorded(DetectOptions(top_n=3), {"threshold": 0.1, "top_n": 1, "include": ["owl"]},
    ...                        keep=["top_n"])
    >>> chosen.threshold, chosen.top_n, chosen.include
    (0.1, 3, ('owl',))
    """
    chosen = {name: tuple(value) if isinstance(value, list) else value for name, value in recorded.items()
              if (name in EVENT_OPTIONS or name in PLACE_OPTIONS) and name not in keep}
    return dataclasses.replace(options, **chosen)


def recorded_form(options: DetectOptions) -> dict:
    """The scoring options of ``options`` as a ``models`` row records them (JSON: lists, not tuples)."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in ((name, getattr(options, name)) for name in EVENT_OPTIONS)}


def changed_options(before: dict, after: dict) -> dict[str, tuple]:
    """The scoring options two ``models`` rows recorded differently (ONNX or PyTorch apart): name -> (before, after).

    Examples
    --------
    >>> changed_options({"threshold": 0.1, "top_n": 1, "onnx": False}, {"threshold": None, "top_n": 1, "onnx": True})
    {'threshold': (0.1, None)}
    """
    defaults = recorded_form(DetectOptions())
    pairs = {name: (before.get(name, defaults[name]), after.get(name, defaults[name]))
             for name in EVENT_OPTIONS if name != "onnx"}
    return {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}


def describe_options(recorded: dict) -> str:
    """A ``models`` row's scoring options in words: the threshold, then those not at ``detect``'s defaults.

    Examples
    --------
    >>> describe_options({"threshold": 0.1, "top_n": 1, "overlap": 0.0, "include": []})
    'threshold 0.1 for every class, top-n 1'
    >>> describe_options({"threshold": None, "exclude": ["wind"]})
    "the bundle's thresholds (thresholds.csv, else 0.5), exclude wind"
    """
    threshold = recorded.get("threshold")
    words = [f"threshold {threshold:g} for every class" if threshold is not None else
             "the bundle's thresholds (thresholds.csv, else 0.5)"]
    defaults = recorded_form(DetectOptions())
    for name in EVENT_OPTIONS:
        value = recorded.get(name, defaults[name])
        if name not in ("threshold", "onnx") and value != defaults[name]:
            shown = ", ".join(value) if isinstance(value, list | tuple) else f"{value:g}"
            words.append(f"{'species' if name == 'include' else name.replace('_', '-')} {shown}")
    return ", ".join(words)


def prepare_model(bundle: str | Path, options: DetectOptions, *, model_here: bool = True
                  ) -> tuple[ServedModel, dict]:
    """A bundle ready to score (without its ``models`` row) and its identity (what :func:`fingerprint` hashes).

    Raises
    ------
    EchoError
        As :func:`load_model`.
    """
    options = runnable_options(bundle, options)
    refuse_photo_model(read_bundles(bundle)[0].config, str(bundle), "the detection service")
    if model_here:
        bundles = load_bundles(bundle, onnx=options.onnx)  # with --onnx, no torch: the exported graphs score
        scorer = window_scorer(bundles, onnx=options.onnx)
    else:
        bundles = read_bundles(bundle)
        scorer = ModelInputs.of(bundles, options)
    check_species(scorer.classes, options.include, options.exclude)
    check_windows(scorer, options)
    thresholds = detection_thresholds(bundles, options.threshold, scorer.classes)
    chosen = recorded_form(options)
    chosen.update({name: getattr(options, name) for name, unset in PLACE_OPTIONS.items()
                   if getattr(options, name) != unset})
    if options.location_filter is not None:  # a threshold, table or bundle it cannot filter: refused now
        table = _table(options.occurrence) if options.occurrence else None
        unexpected_classes(scorer.classes, Place(0.0, 0.0, threshold=options.location_filter, table=table),
                           model=str(bundle))
    spec = bundles[0].builtin  # a built-in (echoengine.builtin): no folder, its identity stands for the weights
    identity = {"weights_hash": spec.identity if spec else models_digest(bundle), "classes": list(scorer.classes),
                "thresholds": [round(float(t), 6) for t in thresholds], "options": chosen}
    return ServedModel(scorer, thresholds, options, None, builtin=spec, taxonomy=bundle_taxonomy(bundles[0])), identity


def runnable_options(bundle: str | Path, options: DetectOptions) -> DetectOptions:
    """``options``, scoring with the exported graphs where torch is not installed (the serving runtime).

    Raises
    ------
    EchoError
        Neither torch nor an exported graph of every bundle is there.
    """
    return dataclasses.replace(options, onnx=use_onnx(bundle, options.onnx))


def _register(db: Database, name: str, path: str, identity: dict) -> Model:
    """The ``models`` row of this identity: the one there, or a new one whose version follows its name's last."""
    try:
        return _find_or_add(db, name, path, identity)
    except IntegrityError:  # another server registered a version of this name meanwhile: look again
        return _find_or_add(db, name, path, identity)


def _find_or_add(db: Database, name: str, path: str, identity: dict) -> Model:
    key = fingerprint(identity)
    with db.transaction() as session:
        row = session.scalar(select(Model).where(Model.fingerprint == key))
        if row is None:
            last = session.scalar(select(func.max(Model.version)).where(Model.name == name)) or 0
            row = Model(name=name, version=last + 1, fingerprint=key, path=path, **identity)
            session.add(row)
            session.flush()
    return row
