"""How a store served a bundle: the scoring ``reviews compare`` and ``calibrate --reviews`` judge it by.

``echoengine serve`` records every model it registers in the store's
``models`` table with the options that change detections (``--threshold``,
``--top-n``, the windows, the species filters:
:data:`~echoengine.service.served.EVENT_OPTIONS`) and the thresholds they
gave. A reviewed detection was made with those options, so a bundle is judged
with them too: :func:`scoring_of` finds the store's record of the bundle (the
same folder with the same weights; the store's active model when it is one of
them, else the one activated last, else the one registered last) and takes its
options. Options given explicitly (``--threshold``, ``--top-n``,
``--overlap``) override them. A bundle the store never served (or a review
export, which records no model) is judged at its own thresholds
(``thresholds.csv``, else 0.5) with ``detect``'s default options.

With no ``--threshold`` recorded, a bundle is judged at its ``thresholds.csv``
as it is now, as serving it again would use it; :attr:`Scoring.source` says
so when the file changed since the store served the bundle.

Examples
--------
>>> scoring_of("model-v1", "echo-store").source  # doctest: +SKIP
'threshold 0.1 for every class, top-n 1 (as the store served it: model model-v1/2, id 3)'
>>> scoring_of("model-v2", None).source  # doctest: +SKIP
"the bundle's thresholds (thresholds.csv, else 0.5) (not served from a store: detect's default options)"
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from echoengine.detection import DetectOptions
from echoengine.errors import EchoError
from echoengine.service.activation import active_model
from echoengine.service.db import Database
from echoengine.service.reviewed import open_store
from echoengine.service.schema import Model
from echoengine.service.served import describe_options, recorded_form, with_recorded
from echoengine.thresholds import DEFAULT_THRESHOLD, load_thresholds, models_digest

__all__ = ["Scoring", "recorded_model", "scoring_of"]

#: The options a user may give instead of the recorded ones (name: command-line spelling).
OVERRIDES = {"threshold": "--threshold", "top_n": "--top-n", "overlap": "--overlap"}


@dataclass(frozen=True)
class Scoring:
    """The options a bundle is judged with, and where they come from (one line, for the output)."""

    options: DetectOptions
    source: str


def recorded_model(db: Database, bundle: str | Path) -> Model | None:
    """The store's record of ``bundle`` (its folder, its weights as they are now), or None when it was never served.

    Of several (the bundle served with other options), the active model; else the one activated last; else the one
    registered last.
    """
    path, digest = str(Path(bundle).resolve()), models_digest(bundle)
    with db.session() as session:
        rows = session.scalars(select(Model).where(Model.path == path, Model.weights_hash == digest)).all()
    if not rows:
        return None
    active = active_model(db)
    return max(rows, key=lambda row: (active is not None and row.id == active.id,
                                      row.activated_at or dt.datetime.min, row.id))


def _thresholds_changed(bundle: str | Path, row: Model) -> bool:
    """Whether the bundle's thresholds (with no ``--threshold``) differ from those it was served with."""
    try:
        now = load_thresholds(Path(bundle), list(row.classes))
    except EchoError:
        now = None
    now = now if now is not None else np.full(len(row.classes), DEFAULT_THRESHOLD)
    return not np.allclose(np.asarray(row.thresholds, dtype=float), now, atol=1e-6)


def scoring_of(bundle: str | Path, store: str | Path | None, db: str | None = None, *,
               overrides: dict | None = None) -> Scoring:
    """The options ``bundle`` is judged with: the store's record of it (None: no store), ``overrides`` on top.

    Parameters
    ----------
    bundle : path
        A bundle or cross-validation folder.
    store, db : path, str
        The store folder of ``echoengine serve`` and its database URL (default ``store/echo.db``).
    overrides : dict
        Options given explicitly (``threshold``, ``top_n``, ``overlap``; a ``threshold`` of None: the bundle's
        thresholds), whatever the store recorded.

    Raises
    ------
    EchoError
        A store that cannot be read, or an override ``DetectOptions`` refuses.
    """
    overrides = dict(overrides or {})
    row = None
    if store is not None:
        database, _ = open_store(store, db)
        try:
            row = recorded_model(database, bundle)
        finally:
            database.dispose()
    options = with_recorded(DetectOptions(), row.options) if row is not None else DetectOptions()
    options = dataclasses.replace(options, **overrides)  # DetectOptions refuses a bad one (EchoError)
    if row is not None:
        origin = f"as the store served it: model {row.name}/{row.version}, id {row.id}"
        if options.threshold is None and _thresholds_changed(bundle, row):
            origin += "; its thresholds.csv changed since, the current one is used"
    else:
        origin = "never served from this store" if store is not None else "not served from a store"
        origin += ": the bundle's thresholds and detect's default options"
    if overrides:
        origin += "; given: " + ", ".join(f"{OVERRIDES.get(name, name)} {'bundle' if value is None else value}"
                                          for name, value in overrides.items())
    return Scoring(options, f"{describe_options(recorded_form(options))} ({origin})")
