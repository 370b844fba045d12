"""The review page: a small static app in the package (``web/``), served at ``/`` with its assets at ``/static``.

Plain HTML, CSS and JavaScript modules, no build step and nothing from the
internet: its Content-Security-Policy lets it load only this server's own
files, so a browser refuses any CDN, web font or tile server. The page
holds no data; it reads and writes through the HTTP API (with the API key a
user types, when the server needs one), so serving it needs no access check.

Examples
--------
>>> (WEB / "index.html").is_file() and (WEB / "js" / "main.js").is_file()
True
>>> "default-src 'self'" in PAGE_HEADERS["Content-Security-Policy"]
True
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["PAGE_HEADERS", "WEB", "mount_page"]

#: The page's files, inside the package.
WEB = Path(__file__).resolve().parent / "web"
#: Sent with the page: only this server's scripts, styles, images and audio (``blob:``: media fetched with a key).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount_page(app: FastAPI) -> None:
    """Serve the review page at ``/`` and its assets at ``/static/...`` (neither is in the OpenAPI document).

    Examples
    --------
    >>> app = FastAPI()
    >>> mount_page(app)
    >>> sorted(route.path for route in app.routes if route.path in ("/", "/static"))
    ['/', '/static']
    """
    @app.get("/", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB), name="static")
