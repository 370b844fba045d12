"""The endpoints of the models a store knows: promote a registered model to the one that scores new uploads.

``POST /api/models/{id}/activate`` is a write (the ``X-API-Key`` header when
the server has a key): the model's bundle is loaded and checked, the model is
recorded as the store's active model (kept across restarts), and the worker
scores the next batch with it (:func:`echoengine.service.activation.activate`),
with the scoring options recorded for it (``serve --candidate`` records the
active model's, but those given); the answer lists any that differ from the
replaced model's as ``changed_options``.
Detections already stored keep the model they came from. ``GET /api/models``
(:mod:`echoengine.service.routes`) lists the models, ``serving`` marking the
one this server scores with.

Examples
--------
>>> [route.path for route in router.routes]
['/api/models/{model_id}/activate']
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam

from echoengine.service import queries
from echoengine.service.activation import ActivationError, activate
from echoengine.service.routes import may_write
from echoengine.service.served import changed_options
from echoengine.service.views import model_json

__all__ = ["router"]

_ID = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="the model's id (GET /api/models)")]

router = APIRouter(dependencies=[Depends(may_write)])


def _detections(request: Request, model_id: int) -> int:
    with request.app.state.service.db.session() as session:
        return dict((model.id, n) for model, n in queries.model_counts(session)).get(model_id, 0)


@router.post("/api/models/{model_id}/activate",
             responses={404: {"description": "no model with this id"},
                        409: {"description": "its bundle is gone, cannot be loaded, or changed since it was "
                                              "registered"}})
def activate_model(request: Request, model_id: _ID) -> dict:
    """Make a registered model the one new uploads are scored with (now and after restarts); the model,
    ``serving: true``, the model it replaced as ``previous``, and ``changed_options``: the scoring options
    (threshold, top_n, windows, species filters) the model was registered with that differ from those of the
    model it replaced (``{}``: it scores as that one did)."""
    service = request.app.state.service
    try:
        row, previous = activate(service, model_id)
    except ActivationError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return {**model_json(row, _detections(request, row.id)), "serving": True, "active": True,
            "activated_at": row.activated_at.isoformat() + "Z" if row.activated_at else None,
            "previous": {"id": previous.id, "name": previous.name, "version": previous.version,
                         "options": previous.options},
            "changed_options": {name: {"before": before, "after": after} for name, (before, after) in
                                changed_options(previous.options, row.options).items()}}
