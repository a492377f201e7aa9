"""Hot inference routes served ahead of FastAPI's routing, with the same answers and errors.

The per-request cost of the HTTP layer dominates small models: FastAPI's dependency solving
(each sync dependency takes a trip through a thread pool), its per-route wrappers, exception
middleware and router cost more than running a small model. So the inference endpoints are
also served by ``PlainRoutes``, the innermost user middleware: inside the request middleware
(ids, access log, drain), ahead of the rest. It calls the same handlers as the FastAPI
routes, which stay registered so that the OpenAPI schema documents them. A ``ServingError``
becomes the same ``{"error": ...}`` answer as through the app's handlers; anything else
propagates to the outer middleware exactly as it would from a route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import require_inference
from app.api.errors import serving_error
from app.errors import ServingError

Handler = Callable[..., Awaitable[Response]]


class PlainEndpoint:
    """Check access, then answer with ``handler(request, **path_params)``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            await require_inference(request)
            params: dict[str, Any] = scope["path_params"]
            response = await self.handler(request, **params)
        except ServingError as exc:
            response = await serving_error(request, exc)
        await response(scope, receive, send)


class PlainRoutes:
    """ASGI middleware that serves its POST routes itself and passes everything else on."""

    def __init__(self, app: ASGIApp, routes: Sequence[tuple[str, Handler]]) -> None:
        self.app = app
        self.routes = [Route(path, PlainEndpoint(h), methods=["POST"]) for path, h in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child_scope)
                    await route.app(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def serve_plain_routes(app: FastAPI, routes: Sequence[tuple[str, Handler]]) -> None:
    """Serve ``routes`` through ``PlainRoutes``, inside every middleware added so far."""
    app.user_middleware.append(Middleware(PlainRoutes, routes=routes))
