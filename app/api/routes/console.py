"""The web console's static files at ``/console``, and ``GET /`` (KServe's liveness, or the
console for a browser).

The console is plain HTML, CSS and JavaScript shipped inside the package (``app/api/console``)
and talks only to this server's own endpoints. Its answers carry a Content-Security-Policy that
allows nothing but this origin: no inline script or style, no other host, no framing.
"""

from __future__ import annotations

import re
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from app.api.responses import error_response, json_response

router = APIRouter(tags=["health"])

CONSOLE_PACKAGE = "app.api"
CONSOLE_FOLDER = "console"
#: The names a console file may have: no folders, no dots but the extension's.
FILE_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}\.(html|css|js|svg)")
MEDIA_TYPES = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
# blob: lets the page preview an image the user picked; data: is only its empty favicon.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the server's version: a browser asks again each time.
    "Cache-Control": "no-cache",
}


def console_file(name: str) -> bytes | None:
    """The bytes of one shipped console file, or None when there is no such file."""
    if FILE_NAME.fullmatch(name) is None:
        return None
    path = resources.files(CONSOLE_PACKAGE).joinpath(CONSOLE_FOLDER, name)
    if not path.is_file():
        return None
    return path.read_bytes()


def _file_response(name: str) -> Response:
    body = console_file(name)
    if body is None:
        return error_response(f"no console file named '{name:.64}'", 404)
    media_type = MEDIA_TYPES[name.rpartition(".")[2]]
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


def wants_html(request: Request) -> bool:
    """Whether the client is a browser asking for a page (``text/html`` in its Accept)."""
    return "text/html" in request.headers.get("accept", "")


@router.get(
    "/",
    summary='KServe liveness: {"status": "alive"}; a browser (Accept: text/html) goes to /console',
)
async def root(request: Request) -> Response:
    """KServe's liveness for API clients; a browser is sent to the console."""
    # Vary: a cache must not give a browser's answer to an API client or the other way round.
    if wants_html(request):
        return RedirectResponse("console", status_code=307, headers={"Vary": "Accept"})
    return json_response({"status": "alive"}, headers={"Vary": "Accept"})


@router.get("/console", include_in_schema=False)
async def console() -> Response:
    return _file_response("index.html")


@router.get("/console/", include_in_schema=False)
async def console_slash() -> Response:
    # The page's files and API calls are relative to /console itself.
    return RedirectResponse("../console", status_code=307)


@router.get("/console/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    return _file_response(name)
