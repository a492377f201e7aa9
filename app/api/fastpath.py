"""Hot inference routes answered ahead of FastAPI's middleware and routing, with the same answers.

The per-request cost of the HTTP layer dominates small models: FastAPI's dependency solving
(each sync dependency takes a trip through a thread pool), its per-route wrappers, its
middleware (server errors, exception telemetry, body limits, exception handlers) and router
cost more than running a small model. So the app (``ServingApp``) matches the inference
endpoints first and serves them through the request middleware only (ids, access log, drain),
which also answers any unexpected exception with the same 500 as for every other route. The
endpoints call the same handlers as the FastAPI routes, which stay registered so that the
OpenAPI schema documents them. A ``ServingError`` becomes the same ``{"error": ...}`` answer
as through the app's handlers.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette._utils import get_route_path
from starlette.convertors import Convertor, StringConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import check_inference_access
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
            check_inference_access(request)
            params: dict[str, Any] = scope["path_params"]
            response = await self.handler(request, **params)
        except ServingError as exc:
            response = await serving_error(request, exc)
        await response(scope, receive, send)


class PlainRoutes:
    """POST routes matched ahead of the app's middleware and served through ``wrap(endpoint)``."""

    def __init__(
        self, routes: Sequence[tuple[str, Handler]], wrap: Callable[[ASGIApp], ASGIApp]
    ) -> None:
        # Matched as a Starlette route would be (same patterns and conversions), without
        # building a Route's intermediate scopes. Parameters of the ``str`` convertor are
        # taken as matched (its conversion returns them unchanged).
        self.routes: list[tuple[re.Pattern[str], dict[str, Convertor[Any]], ASGIApp]] = []
        for path, handler in routes:
            pattern, _, convertors = compile_path(path)
            converted = {
                key: convertor
                for key, convertor in convertors.items()
                if not isinstance(convertor, StringConvertor)
            }
            self.routes.append((pattern, converted, wrap(PlainEndpoint(handler))))

    def match(self, scope: Scope) -> ASGIApp | None:
        """The endpoint that serves this request, if any; its path parameters are then set."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path = get_route_path(scope)
            for pattern, convertors, endpoint in self.routes:
                found = pattern.match(path)
                if found is not None:
                    params = found.groupdict()
                    for key, convertor in convertors.items():
                        params[key] = convertor.convert(params[key])
                    if "path_params" in scope:
                        params = {**scope["path_params"], **params}
                    scope["path_params"] = params
                    return endpoint
        return None


class ServingApp(FastAPI):
    """The FastAPI app, answering the requests of its ``plain_routes`` (if any) first."""

    plain_routes: PlainRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        plain = self.plain_routes
        endpoint = plain.match(scope) if plain is not None else None
        if endpoint is not None:
            scope["app"] = self
            await endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
