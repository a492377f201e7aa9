"""Dependencies: the app's collaborators, the request's context and API-key checks."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Receive

from app.api.body import header
from app.inference.access import bearer_token
from app.inference.context import REST, RequestContext
from app.inference.dataplane import DataPlane
from app.metrics import Metrics
from app.registry.installer import ModelInstaller
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_dataplane(request: Request) -> DataPlane:
    dataplane: DataPlane = request.app.state.dataplane
    return dataplane


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_installer(request: Request) -> ModelInstaller:
    installer: ModelInstaller = request.app.state.installer
    return installer


SettingsDep = Annotated[Settings, Depends(get_settings)]
DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
InstallerDep = Annotated[ModelInstaller, Depends(get_installer)]


def presented_key(request: Request) -> str | None:
    """The API key in ``Authorization: Bearer`` or ``X-API-Key``, if any."""
    token = bearer_token(header(request, "authorization"))
    if token is not None:
        return token
    key = header(request, "x-api-key")
    # Trimmed like a Bearer token (and like the configured keys).
    return None if key is None else key.strip()


def require_management(request: Request) -> None:
    """Allow management calls only with the management key (or when opened explicitly)."""
    get_dataplane(request).access.check_management(presented_key(request))


async def client_gone(receive: Receive) -> None:
    """Return once the client has closed its connection (call after the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def request_context(request: Request) -> RequestContext:
    """Check the inference key (when one is set) and build the request's context.

    The middleware has put the request's id and its ``X-Request-Timeout-Us`` in its scope.
    """
    access = request.app.state.dataplane.access
    if not access.inference_open:
        access.check_inference(presented_key(request))
    state = request.scope["state"]
    return RequestContext(
        state["request_id"],
        REST,
        timeout_us=state["timeout_us"],
        disconnected=partial(client_gone, request.receive),
        trace=state.get("trace"),
    )


Management = Depends(require_management)
