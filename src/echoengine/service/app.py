"""The FastAPI application of a running service: its routes, error answers, docs, and the worker's life.

Every error a client can cause is answered with its status and a JSON body
``{"detail": "one line"}``: validation errors (422) are flattened to one
line, an :class:`~echoengine.errors.EchoError` is a 400, a body over the
upload limit a 413 that names the limit. The worker starts with the
application and stops with it.

Examples
--------
>>> app = create_app(service)  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from echoengine.errors import EchoError
from echoengine.service.docs import docs_page
from echoengine.service.model_routes import router as model_router
from echoengine.service.page import mount_page
from echoengine.service.routes import router

__all__ = ["BODY_SLACK", "create_app", "one_line"]

logger = logging.getLogger("echoengine.service")
#: Bytes an upload's body may hold beyond ``--max-upload-mb`` (the form's other fields and boundaries).
BODY_SLACK = 64 * 1024
_DESCRIPTION = ("Detections of animal sounds in uploaded recordings: upload audio (queued, scored in the "
                "background by the served model), then list, listen to and review the detections.")


def one_line(errors: list[dict]) -> str:
    """Validation errors as one line: ``where: what; where: what``.

    Examples
    --------
    >>> one_line([{"loc": ("query", "limit"), "msg": "Input should be greater than or equal to 0"}])
    'limit: Input should be greater than or equal to 0'
    >>> one_line([{"type": "json_invalid", "loc": ("body", 10), "msg": "JSON decode error",
    ...            "ctx": {"error": "Expecting value"}}])
    'the request body is not valid JSON (Expecting value, at character 10)'
    """
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            at = error.get("loc", ())[-1]
            reason = " ".join(str(error.get("ctx", {}).get("error", "JSON decode error")).split())
            parts.append(f"the request body is not valid JSON ({reason}"
                         f"{f', at character {at}' if isinstance(at, int) else ''})")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path", "form"))
        message = " ".join(str(error.get("msg", "invalid")).split())
        parts.append(f"{where or 'request'}: {message}")
    return "; ".join(parts)


def _too_large(max_upload_mb: float) -> str:
    return f"the upload is larger than this server's limit of {max_upload_mb:g} MB (--max-upload-mb)"


class _DeclaredTooLarge:
    """A 413 at once for a body whose ``Content-Length`` is over the limit: not a byte of it is read.

    (Starlette's :class:`RequestBodyLimitMiddleware`, inside this one, stops
    a body without a length, or longer than its length says, as it arrives.)
    """

    def __init__(self, app, *, max_body_size: int, reason: str) -> None:
        self.app, self.max_body_size, self.reason = app, max_body_size, reason

    async def __call__(self, scope, receive, send) -> None:
        length = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if length.isdigit() and int(length) > self.max_body_size:
            await JSONResponse({"detail": self.reason}, status_code=413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _error_handlers(app: FastAPI, max_upload_mb: float) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": one_line(list(exc.errors()))}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        detail = _too_large(max_upload_mb) if exc.status_code == 413 else exc.detail
        return JSONResponse({"detail": " ".join(str(detail).split())}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(EchoError)
    async def bad_input(_request: Request, exc: EchoError) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=getattr(exc, "status", 400))


def create_app(service) -> FastAPI:
    """The application serving ``service`` (:class:`echoengine.service.server.Service`); it runs its worker.

    ``/`` is the review page (:mod:`echoengine.service.page`), ``/docs`` a self-contained HTML reference (no
    CDN), ``/openapi.json`` the OpenAPI document.
    """
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="echoengine detection service", description=_DESCRIPTION, version=service.version,
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    limit = round(service.max_upload_mb * 2**20) + BODY_SLACK
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=limit)  # counts the bytes as they arrive
    app.add_middleware(_DeclaredTooLarge, max_body_size=limit, reason=_too_large(service.max_upload_mb))
    _error_handlers(app, service.max_upload_mb)
    app.include_router(router)
    app.include_router(model_router)  # POST /api/models/{id}/activate

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()))

    mount_page(app)
    return app
