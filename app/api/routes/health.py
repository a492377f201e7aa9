"""Liveness, readiness and server metadata."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import __version__
from app.api.deps import SettingsDep
from app.api.responses import error_response, json_response
from app.protocol.schemas import ErrorBody, ServerMetadata

router = APIRouter(tags=["health"])

EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
]


def server_ready(request: Request) -> bool:
    return bool(request.app.state.ready) and not request.app.state.shutting_down


@router.get("/v2/health/live", summary="The process is up")
async def live() -> Response:
    return json_response({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Startup loading is done and the server is not shutting down",
    responses={503: {"model": ErrorBody}},
)
async def ready(request: Request) -> Response:
    if server_ready(request):
        return json_response({"ready": True})
    return error_response("server is not ready", 503)


@router.get("/v2", summary="Server metadata", response_model=ServerMetadata)
async def metadata(settings: SettingsDep) -> Response:
    return json_response(
        {"name": settings.server_name, "version": __version__, "extensions": EXTENSIONS}
    )
