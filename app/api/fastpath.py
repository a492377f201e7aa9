"""Hot inference routes: declared once, answered ahead of FastAPI's middleware and routing.

The per-request cost of the HTTP layer dominates small models: FastAPI's dependency solving,
its per-route wrappers, its middleware (server errors, exception telemetry, body limits,
exception handlers) and router cost more than running a small model. So each inference route
is declared once, as a ``HotRoute``; that one declaration is registered with FastAPI (which
documents it in the OpenAPI schema) and with the app's ``PlainRoutes``, which match these
requests first and serve them through the request middleware only (ids, access log, drain).
The middleware also answers any unexpected exception with the same 500 as for every other
route, and a ``ServingError`` becomes the same ``{"error": ...}`` answer as through the app's
handlers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.convertors import Convertor, StringConvertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import request_context
from app.api.errors import serving_error
from app.errors import ServingError
from app.inference.context import RequestContext

#: ``handler(request, context, **path_params)``
#: Set on the answer of a request that waited for its model to load on demand.
COLD_START_HEADER = "X-Cold-Start"
Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class HotRoute:
    """One POST inference route: its path, handler and what OpenAPI says of it."""

    path: str
    handler: Handler
    summary: str
    tags: list[str]
    description: str | None = None
    response_model: Any = None
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)
    openapi_extra: dict[str, Any] | None = None


def _documented_endpoint(route: HotRoute) -> Callable[..., Awaitable[Response]]:
    """The endpoint FastAPI registers: same handler, path parameters in its signature."""

    async def endpoint(request: Request, **params: Any) -> Response:
        context = request_context(request)
        response = await route.handler(request, context, **params)
        if context.cold_start:
            response.headers[COLD_START_HEADER] = "true"
        return response

    _, _, convertors = compile_path(route.path)
    parameters = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
    ] + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=str) for n in convertors]
    endpoint.__signature__ = inspect.Signature(parameters, return_annotation=Response)  # type: ignore[attr-defined]
    endpoint.__name__ = route.handler.__name__
    return endpoint


def add_hot_routes(router: APIRouter, routes: Sequence[HotRoute]) -> None:
    """Register ``routes`` with FastAPI (the schema documents them from there)."""
    for route in routes:
        router.add_api_route(
            route.path,
            _documented_endpoint(route),
            methods=["POST"],
            summary=route.summary,
            description=route.description or "",
            tags=list(route.tags),
            response_model=route.response_model,
            responses=route.responses,
            openapi_extra=route.openapi_extra,
        )


class PlainEndpoint:
    """Check access, build the request's context, answer with the route's handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        context: RequestContext | None = None
        try:
            context = request_context(request)
            params: dict[str, Any] = scope["path_params"]
            response = await self.handler(request, context, **params)
        except ServingError as exc:
            response = await serving_error(request, exc)
        if context is not None and context.cold_start:
            response.headers[COLD_START_HEADER] = "true"
        await response(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The request's path below the app's root path (what routes are matched against)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


class PlainRoutes:
    """Hot routes matched ahead of the app's middleware and served through ``wrap(endpoint)``."""

    def __init__(self, routes: Sequence[HotRoute], wrap: Callable[[ASGIApp], ASGIApp]) -> None:
        # Matched as a Starlette route would be (same patterns and conversions), without
        # building a Route's intermediate scopes. Parameters of the ``str`` convertor are
        # taken as matched (its conversion returns them unchanged).
        self.paths = [route.path for route in routes]
        self.routes: list[tuple[re.Pattern[str], dict[str, Convertor[Any]], ASGIApp, HotRoute]] = []
        for route in routes:
            pattern, _, convertors = compile_path(route.path)
            converted = {
                key: convertor
                for key, convertor in convertors.items()
                if not isinstance(convertor, StringConvertor)
            }
            self.routes.append((pattern, converted, wrap(PlainEndpoint(route.handler)), route))

    def match(self, scope: Scope) -> ASGIApp | None:
        """The endpoint that serves this request, if any; its path parameters are then set."""
        if scope["type"] == "http" and scope["method"] == "POST":
            path = route_path(scope)
            for pattern, convertors, endpoint, route in self.routes:
                found = pattern.match(path)
                if found is not None:
                    # As a router does: the route (its path template) for metrics and traces.
                    scope["route"] = route
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
