"""v2 model repository extension: index, load and unload (management key required)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.body import read_body
from app.api.deps import DataPlaneDep, Management, SettingsDep
from app.api.responses import json_response
from app.errors import BadRequest
from app.protocol.schemas import ErrorBody, RepositoryEntry
from app.protocol.v2 import loads_object
from app.registry.load_parameters import load_body_limit

router = APIRouter(tags=["repository"], dependencies=[Management])


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in (400, 401, 403, *codes)}


INDEX_ERRORS = _errors(413, 415)
LOAD_ERRORS = _errors(404, 409, 413, 415, 422, 503)
UNLOAD_ERRORS = _errors(404, 413, 415)
SMALL_BODY = 64 * 1024


async def _optional_object(request: Request, limit: int = SMALL_BODY) -> dict[str, Any]:
    body = await read_body(request, limit)
    return loads_object(body) if body.strip() else {}


@router.post(
    "/v2/repository/index",
    summary="Every model in the repository with its state",
    response_model=list[RepositoryEntry],
    responses=INDEX_ERRORS,
)
async def index(request: Request, dataplane: DataPlaneDep) -> Response:
    options = await _optional_object(request)
    return json_response(dataplane.repository_index(bool(options.get("ready"))))


# Names take the rest of the path so that one with an encoded slash is refused as a name.
@router.post(
    "/v2/repository/models/{model_name:path}/load",
    summary="Load or reload a model; parameters.config and base64 file:<version>/model.onnx "
    "install a config and model files first (validated, atomic)",
    responses=LOAD_ERRORS,
)
async def load(
    request: Request, dataplane: DataPlaneDep, settings: SettingsDep, model_name: str
) -> Response:
    options = await _optional_object(request, load_body_limit(settings.max_upload_bytes))
    parameters = options.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    versions = await dataplane.load(model_name, parameters)
    return json_response({"name": model_name, "versions": versions, "state": "READY"})


@router.post(
    "/v2/repository/models/{model_name:path}/unload",
    summary="Stop serving a model (its files stay on disk)",
    responses=UNLOAD_ERRORS,
)
async def unload(request: Request, dataplane: DataPlaneDep, model_name: str) -> Response:
    await _optional_object(request)
    await dataplane.unload(model_name)
    return json_response({"name": model_name, "state": "UNLOADED"})
