"""Dependencies: the app's collaborators, request bodies and API-key checks."""

from __future__ import annotations

import hmac
from functools import partial
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Receive

from app.errors import BadRequest, Forbidden, PayloadTooLarge, Unauthorized
from app.inference.batching import ClientDisconnected, disconnect_signal
from app.inference.service import InferenceService
from app.metrics import Metrics
from app.registry.installer import ModelInstaller
from app.registry.registry import ModelRegistry
from app.settings import Settings


def header(request: Request, name: str) -> str | None:
    """The first ``name`` header's value, as ``request.headers.get`` gives it.

    Without building the request's headers mapping, which costs more than this scan on the
    hot inference paths.
    """
    key = name.lower().encode("latin-1")
    for found, value in request.scope["headers"]:
        if found == key:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_installer(request: Request) -> ModelInstaller:
    installer: ModelInstaller = request.app.state.installer
    return installer


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
InstallerDep = Annotated[ModelInstaller, Depends(get_installer)]


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = header(request, "content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not an integer") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit}")
    # Read from ``receive`` directly: most bodies arrive in one message.
    receive = request.receive
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client's doing, not a server fault (nobody will read this answer anyway).
            raise ClientDisconnected("the client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def presented_key(request: Request) -> str | None:
    """The API key in ``Authorization: Bearer`` or ``X-API-Key``, if any."""
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key")


def _check_key(request: Request, expected: str, what: str) -> None:
    given = presented_key(request)
    if given is None:
        raise Unauthorized(f"{what} needs an API key (Authorization: Bearer or X-API-Key)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("the API key is not valid")


def require_management(request: Request) -> None:
    """Allow management calls only with the management key (or when opened explicitly)."""
    settings = get_settings(request)
    if settings.management_api_key is None:
        if settings.allow_open_management:
            return
        raise Forbidden(
            "management endpoints are disabled: set ONNX_SERVE_MANAGEMENT_API_KEY "
            "(or ONNX_SERVE_ALLOW_OPEN_MANAGEMENT=true) to enable them"
        )
    _check_key(request, settings.management_api_key.get_secret_value(), "this endpoint")


async def client_gone(receive: Receive) -> None:
    """Return once the client has closed its connection (call after the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def check_inference_access(request: Request) -> None:
    """Check the inference key when one is configured; queued work may see a disconnect.

    The disconnect signal is set in the calling task's context: call this from the task that
    serves the request.
    """
    key = request.app.state.settings.inference_api_key
    if key is not None:
        _check_key(request, key.get_secret_value(), "inference")
    disconnect_signal.set(partial(client_gone, request.receive))


async def require_inference(request: Request) -> None:
    """``check_inference_access`` as a dependency: async so that FastAPI runs it in the
    request's own task, without a thread hop, where the disconnect signal is the endpoint's."""
    check_inference_access(request)


Management = Depends(require_management)
Inference = Depends(require_inference)
