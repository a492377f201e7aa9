"""Liveness, readiness and server metadata."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import DataPlaneDep
from app.api.responses import error_response, json_response
from app.protocol.schemas import ErrorBody, ServerMetadata

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="The process is up")
async def live() -> Response:
    return json_response({"live": True})


@router.get(
    "/v2/health/ready",
    summary="Startup loading is done and the server is not shutting down",
    responses={503: {"model": ErrorBody}},
)
async def ready(dataplane: DataPlaneDep) -> Response:
    if dataplane.ready():
        return json_response({"ready": True})
    return error_response("server is not ready", 503)


@router.get("/v2", summary="Server metadata", response_model=ServerMetadata)
async def metadata(dataplane: DataPlaneDep) -> Response:
    return json_response(dataplane.server_metadata())
