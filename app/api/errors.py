"""Exception handlers: every error leaves as ``{"error": "..."}`` with its status."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.api.responses import error_response
from app.errors import ServingError, Unauthorized

log = logging.getLogger(__name__)


#: The ``WWW-Authenticate`` challenge of every 401 answer.
CHALLENGE = 'Bearer realm="onnx-serve"'


async def serving_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    headers = None
    if exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if isinstance(exc, Unauthorized):
        # A 401 names the scheme it takes (RFC 9110); X-API-Key is accepted as well.
        headers = {"WWW-Authenticate": CHALLENGE}
    return error_response(exc.message, exc.status, headers)


async def validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response("invalid request: " + "; ".join(parts), 400)


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(str(exc.detail), exc.status_code, dict(exc.headers or {}))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response("internal server error", 500)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
