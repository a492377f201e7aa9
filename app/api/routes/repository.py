"""v2 model repository extension: index, load and unload (management key required)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import InstallerDep, Management, RegistryDep, SettingsDep, read_body
from app.api.load_parameters import load_body_limit, load_from_parameters
from app.api.responses import json_response
from app.errors import BadRequest
from app.protocol.schemas import ErrorBody, RepositoryEntry
from app.protocol.v2 import loads_object
from app.registry.repository import validate_name

router = APIRouter(tags=["repository"], dependencies=[Management])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 422, 503)
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


# Names take the rest of the path so that one with an encoded slash is refused as a name.
@router.post(
    "/v2/repository/models/{model_name:path}/load",
    summary="Load or reload a model; parameters.config and base64 file:<version>/model.onnx "
    "install a config and model files first (validated, atomic)",
    responses=ERRORS,
)
async def load(
    request: Request,
    registry: RegistryDep,
    installer: InstallerDep,
    settings: SettingsDep,
    model_name: str,
) -> Response:
    options = await _optional_object(request, load_body_limit(settings.max_upload_bytes))
    parameters = options.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    limit = settings.max_upload_bytes
    if await load_from_parameters(installer, model_name, parameters, limit) is None:
        async with installer.lock(validate_name(model_name)):
            await registry.load(model_name)
    loaded = [m for m in registry.live() if m.name == model_name]
    return json_response(
        {"name": model_name, "versions": [str(m.version) for m in loaded], "state": "READY"}
    )


@router.post(
    "/v2/repository/models/{model_name:path}/unload",
    summary="Stop serving a model (its files stay on disk)",
    responses=ERRORS,
)
async def unload(
    request: Request, registry: RegistryDep, installer: InstallerDep, model_name: str
) -> Response:
    await _optional_object(request)
    async with installer.lock(validate_name(model_name)):
        await registry.unload(model_name)
    return json_response({"name": model_name, "state": "UNLOADED"})
