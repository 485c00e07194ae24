"""The browser playground: one page and its two assets, served from server/static.

The page and its assets are open (server/protection/security.py); the API calls the page makes carry the key typed into it.
`playground: false` in the settings turns all of it, `/` included, into 404s.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from server.errors import APIError
from server.state import state_of

STATIC = Path(__file__).resolve().parents[1] / "static"
ASSETS = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
# Everything the page loads comes from this server: no inline script, no CDN, no frames.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["playground"], include_in_schema=False)


def _check_on(request: Request) -> None:
    if not state_of(request).settings.playground:
        raise APIError(404, "Not Found", code="not_found")


@router.get("/")
async def root(request: Request) -> Response:
    _check_on(request)
    # Relative, so that a proxy's path prefix survives.
    return RedirectResponse("playground", status_code=307)


@router.get("/playground")
async def page(request: Request) -> Response:
    _check_on(request)
    return FileResponse(STATIC / "playground.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/playground/{name}")
async def asset(request: Request, name: str) -> Response:
    _check_on(request)
    if name not in ASSETS:  # a fixed list: no path from the URL ever reaches the file system
        raise APIError(404, "Not Found", code="not_found")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=HEADERS)
