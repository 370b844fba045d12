"""Which model scores a store's new uploads: its active model, chosen when a server starts and changed by activation.

Every bundle a server is given is registered in ``models`` (one row per
distinct set of weights, classes, thresholds and options); the store's
**active model** is the row activated last (``models.activated_at``). A
server scores new uploads with the active model and records it on each
detection, so detections keep the model they came from.

When ``echoengine serve BUNDLE --store DIR`` starts, BUNDLE is registered and

* with ``--candidate``: only registered; the store's active model is served
  (a store with none refuses: there is nothing to serve beside it);
* with ``--activate``: it becomes the active model;
* otherwise it becomes the active model when the store has none, when the
  active one is a version of the same bundle folder, or when BUNDLE was
  registered (for the first time, or again with changes) after the active
  model was activated. Else the active model stays: a promotion
  (``POST /api/models/{id}/activate``) outlives restarts of the server with
  its old command line.

With ``--candidate`` or ``--activate``, the scoring options the command
line does not give (``given``: ``--threshold``, ``--top-n``, the windows, the
species filters) are the active model's, as its row recorded them: a model
promoted scores as the one it replaces unless told otherwise. Whenever the
active model changes to one registered with other scoring options, the log
says which (and the activation's answer, ``changed_options``).

:func:`activate` makes another registered model the active one while the
server runs: its bundle is loaded (in a new scoring process when the server
scores in one), checked to be the bundle that was registered, marked active
in the database, and handed to the worker after the batch it is scoring.

Examples
--------
>>> served = open_served(db, "new-model", DetectOptions(), candidate=True)  # doctest: +SKIP
>>> activate(service, 3)  # doctest: +SKIP
(<Model 3>, <Model 1>)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path

from sqlalchemy import func, select, update

from echoengine.detection import DetectOptions
from echoengine.errors import EchoError
from echoengine.service.db import Database
from echoengine.service.schema import Model, utc_now
from echoengine.service.scorer_process import ScorerProcess
from echoengine.service.served import (
    EVENT_OPTIONS,
    PLACE_OPTIONS,
    ServedModel,
    changed_options,
    describe_options,
    load_model,
    load_registered,
    with_recorded,
)

__all__ = ["ActivationError", "activate", "active_model", "mark_active", "open_served"]

logger = logging.getLogger("echoengine.service")
_SWITCH = threading.Lock()  # one activation at a time


class ActivationError(EchoError):
    """A model that cannot be made active; ``status`` is the HTTP status that says why (404, 409)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def active_model(db: Database) -> Model | None:
    """The store's active model: the row activated last (None when no model was ever activated)."""
    with db.session() as session:
        return session.scalar(select(Model).where(Model.activated_at.is_not(None))
                              .order_by(Model.activated_at.desc(), Model.id.desc()).limit(1))


def mark_active(db: Database, model_id: int) -> None:
    """Record that model ``model_id`` scores new uploads from now on (in this and later servers)."""
    with db.transaction() as session:
        session.execute(update(Model).where(Model.id == model_id).values(activated_at=utc_now()))


def _last_registered(db: Database, path: str):
    """When a version of the bundle folder ``path`` was last registered."""
    with db.session() as session:
        return session.scalar(select(func.max(Model.created_at)).where(Model.path == path))


def _chosen(db: Database, registered: Model, active: Model | None, *, candidate: bool, activate: bool) -> Model:
    """The row to serve at start (see the module's text for the rules)."""
    if candidate:
        return active
    if activate or active is None or active.path == registered.path:
        return registered
    last = _last_registered(db, registered.path)
    return registered if last is not None and last > active.activated_at else active


def _register(db: Database, bundle: str | Path, options: DetectOptions, active: Model | None,
              given: Collection[str] | None, model_here: bool) -> ServedModel:
    """``bundle`` loaded and registered, the options not ``given`` taken from ``active`` (when both are there)."""
    taken: list[str] = []
    if active is not None and given is not None:
        inherited = with_recorded(options, active.options, keep={*given, "onnx"})
        taken = [name for name in (*EVENT_OPTIONS, *PLACE_OPTIONS)
                 if getattr(inherited, name) != getattr(options, name)]
        options = inherited
    try:
        registered = load_model(db, bundle, options, model_here=model_here)
    except EchoError as exc:
        if not taken:
            raise
        raise EchoError(f"{exc} ({', '.join(taken)}: the options of the active model {active.name}/"
                        f"{active.version}, taken since the command line does not give them)") from None
    if taken:  # said, since the command line does not say it
        logger.info("%s is model %s/%s (id %d), scoring with %s (%s as the active model %s/%s)", bundle,
                    registered.row.name, registered.row.version, registered.row.id,
                    describe_options(registered.row.options), ", ".join(taken), active.name, active.version)
    return registered


def open_served(db: Database, bundle: str | Path, options: DetectOptions, *, candidate: bool = False,
                activate: bool = False, model_here: bool = True,
                given: Collection[str] | None = None) -> ServedModel:
    """Register ``bundle`` and load the model the store should score with (see the module's text); it is active.

    ``given`` names the options the user gave (None: all); with ``candidate``
    or ``activate``, the others are taken from the store's active model.

    Raises
    ------
    EchoError
        Both ``candidate`` and ``activate``; a bundle that cannot be loaded
        (or that the active model's options do not fit); ``candidate`` on a
        store without an active model; an active model whose bundle is gone or
        has changed since it was registered.
    """
    if candidate and activate:
        raise EchoError("--candidate registers the bundle without activating it, --activate activates it: give one")
    active = active_model(db)
    if candidate and active is None:
        raise EchoError("--candidate: this store has no active model to serve beside the candidate; serve a "
                        "bundle without --candidate first")
    registered = _register(db, bundle, options, active, given if candidate or activate else None, model_here)
    row = _chosen(db, registered.row, active, candidate=candidate, activate=activate)
    if row.id == registered.row.id:
        served = registered
    else:
        try:
            served = load_registered(row, registered.options, model_here=model_here)
        except EchoError as exc:
            raise EchoError(f"{exc}; or serve {bundle} with --activate to make it the active model instead") from None
        say = logger.info if candidate else logger.warning  # unasked: the user should hear of it
        say("%s is registered as model %s/%s (id %d), not active: the store's active model is %s/%s, activated "
            "since; activate it with POST /api/models/%d/activate, or serve it with --activate", bundle,
            registered.row.name, registered.row.version, registered.row.id, row.name, row.version, registered.row.id)
    if active is None or active.id != row.id:
        mark_active(db, row.id)
        if active is not None:
            _say_changes(active, row)
    return served


def _say_changes(before: Model, after: Model) -> None:
    """Warn when the active model changes to one that scores with other options."""
    changed = changed_options(before.options, after.options)
    if changed:
        logger.warning("model %s/%s scores new uploads with other options than %s/%s did: %s", after.name,
                       after.version, before.name, before.version,
                       "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()))


def _row(db: Database, model_id: int) -> Model:
    with db.session() as session:
        row = session.get(Model, model_id)
    if row is None:
        raise ActivationError(f"no model with id {model_id}", status=404)
    return row


def _load(service, row: Model) -> ServedModel:
    """The model of ``row`` ready to score as the service scores (in a scoring process when it uses one)."""
    current = service.served
    try:
        served = load_registered(row, current.options, model_here=current.process is None)
        if current.process is not None:
            served.process = ScorerProcess(row.path, served.options, served.thresholds, current.process.processes)
    except EchoError as exc:
        raise ActivationError(f"model {row.id} cannot be activated: {exc}") from None
    return served


def activate(service, model_id: int) -> tuple[Model, Model]:
    """Make model ``model_id`` the one that scores new uploads; the model and the one it replaced.

    The worker finishes the batch it is scoring with the old model; the next
    batch is scored with the new one. Activating the model already served
    only records it as active.

    Raises
    ------
    ActivationError
        No such model (404); its bundle is gone, cannot be loaded or has
        changed since it was registered (409).
    """
    with _SWITCH:
        row = _row(service.db, model_id)
        current = service.served
        if row.id == current.row.id:
            if (active := active_model(service.db)) is None or active.id != row.id:
                mark_active(service.db, row.id)
            return _row(service.db, model_id), current.row
        served = _load(service, row)
        try:
            mark_active(service.db, row.id)
        except BaseException:
            if served.process is not None:
                served.process.stop()
            raise
        previous = service.worker.use(served)
        service.served = served
        service.store.audio_config = served.scorer.config.audio
        if previous.process is not None:
            previous.process.stop()
        logger.info("model %s/%s (id %d) is active: new uploads are scored with it (was %s/%s), with %s", row.name,
                    row.version, row.id, previous.row.name, previous.row.version, describe_options(row.options))
        _say_changes(previous.row, row)
        return _row(service.db, model_id), previous.row
