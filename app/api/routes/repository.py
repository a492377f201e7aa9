"""v2 model repository extension: index, load and unload (management key required)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import Management, RegistryDep, read_body
from app.api.responses import json_response
from app.protocol.schemas import ErrorBody, RepositoryEntry
from app.protocol.v2 import loads_object

router = APIRouter(tags=["repository"], dependencies=[Management])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 503)
}
SMALL_BODY = 64 * 1024


async def _optional_object(request: Request, limit: int = SMALL_BODY) -> dict[str, Any]:
    body = await read_body(request, limit)
    return loads_object(body) if body.strip() else {}


@router.post(
    "/v2/repository/index",
    summary="Every model in the repository with its state",
    response_model=list[RepositoryEntry],
    responses=ERRORS,
)
async def index(request: Request, registry: RegistryDep) -> Response:
    options = await _optional_object(request)
    entries = [s.as_dict() for s in registry.index()]
    if options.get("ready"):
        entries = [e for e in entries if e["state"] == "READY"]
    return json_response(entries)


@router.post(
    "/v2/repository/models/{model_name}/load",
    summary="Load or reload a model from the repository",
    responses=ERRORS,
)
async def load(request: Request, registry: RegistryDep, model_name: str) -> Response:
    await _optional_object(request)
    loaded = await registry.load(model_name)
    return json_response(
        {"name": model_name, "versions": [str(m.version) for m in loaded], "state": "READY"}
    )


@router.post(
    "/v2/repository/models/{model_name}/unload",
    summary="Stop serving a model (its files stay on disk)",
    responses=ERRORS,
)
async def unload(request: Request, registry: RegistryDep, model_name: str) -> Response:
    await _optional_object(request)
    await registry.unload(model_name)
    return json_response({"name": model_name, "state": "UNLOADED"})
