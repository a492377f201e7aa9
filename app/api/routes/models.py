"""Model management: upload (streamed multipart), delete, and the list of models with states."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import DataPlaneDep, InstallerDep, Management, SettingsDep
from app.api.multipart import read_upload_form
from app.api.responses import json_response
from app.errors import BadRequest
from app.optimize.uploads import parse_optimize_field
from app.protocol.schemas import ErrorBody
from app.registry.install_plan import InstallPlan, VersionFile
from app.registry.installer import ModelInstaller
from app.registry.repository import parse_version, validate_name

router = APIRouter(tags=["models"], dependencies=[Management])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 413, 415, 422, 507)
}
KEY_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 403)}
DELETE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409)
}
FORM_FIELDS = ("file", "name", "version", "config", "labels", "overwrite", "optimize")
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "model.onnx"},
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
                        "version": {
                            "type": "string",
                            "pattern": "^[1-9][0-9]*$",
                            "description": "Default: one more than the highest version.",
                        },
                        "config": {"type": "string", "description": "config.json text."},
                        "labels": {"type": "string", "description": "labels.txt text."},
                        "overwrite": {"type": "boolean", "default": False},
                        "optimize": {
                            "type": "string",
                            "description": "Also install an optimised copy as the next version "
                            "(int8, int8-static, fp16 or graph, or a JSON object of options): "
                            "see docs/optimization.md.",
                        },
                    },
                }
            }
        },
    }
}


def _flag(fields: dict[str, str], key: str) -> bool:
    value = fields.get(key, "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise BadRequest(f"form field '{key}' must be true or false")


def _version(fields: dict[str, str]) -> int | None:
    text = fields.get("version", "")
    return parse_version(text) if text != "" else None


def _check_fields(fields: dict[str, str]) -> None:
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise BadRequest(
            f"unknown form field '{unknown[0]:.64}' (expected: {', '.join(FORM_FIELDS)})"
        )


def _precheck(installer: ModelInstaller) -> Any:
    def check(fields: dict[str, str]) -> None:
        _check_fields(fields)
        parse_optimize_field(fields.get("optimize", ""))
        if "name" in fields:
            installer.precheck(fields["name"], _version(fields), _flag(fields, "overwrite"))

    return check


@router.post(
    "/models",
    status_code=201,
    summary="Upload a model version (validated, installed atomically, loaded)",
    responses=ERRORS,
    openapi_extra=UPLOAD_BODY,
)
async def upload(request: Request, installer: InstallerDep, settings: SettingsDep) -> Response:
    async with installer.stage() as stage:
        target = stage.new_model_path()
        form = await read_upload_form(
            request,
            "file",
            target,
            max_file_bytes=settings.max_upload_bytes,
            on_file_start=_precheck(installer),
        )
        fields = form.fields
        _check_fields(fields)
        if not form.has_file:
            raise BadRequest("the form has no 'file' part")
        if "name" not in fields:
            raise BadRequest("the form has no 'name' field")
        plan = InstallPlan(
            name=validate_name(fields["name"]),
            files=[VersionFile(target, _version(fields))],
            config=fields["config"].encode() if fields.get("config", "").strip() else None,
            labels=fields.get("labels"),
            overwrite=_flag(fields, "overwrite"),
            optimize=parse_optimize_field(fields.get("optimize", "")),
        )
        installed, *optimized = await installer.install(stage, plan)
    body = {**installed.as_dict(), "size_bytes": form.file_size, "sha256": form.sha256}
    if optimized:
        body["optimized"] = optimized[0].as_dict()
    location = f"/v2/models/{installed.name}/versions/{installed.version}"
    return json_response(body, 201, {"Location": location})


@router.get(
    "/models", summary="Every model with its versions, states and reasons", responses=KEY_ERRORS
)
async def list_models(dataplane: DataPlaneDep) -> Response:
    return json_response({"models": dataplane.catalog()})


# Paths take the rest of the URL so that a name with an encoded slash is refused as a name.
@router.delete(
    "/models/{model_name:path}/versions/{model_version}",
    summary="Delete one version from disk (after in-flight requests drain)",
    responses=DELETE_ERRORS,
)
async def delete_version(installer: InstallerDep, model_name: str, model_version: str) -> Response:
    await installer.delete_version(model_name, model_version)
    return json_response({"name": model_name, "version": model_version, "deleted": True})


@router.delete(
    "/models/{model_name:path}",
    summary="Delete a model and all its versions (after in-flight requests drain)",
    responses=DELETE_ERRORS,
)
async def delete_model(installer: InstallerDep, model_name: str) -> Response:
    await installer.delete_model(model_name)
    return json_response({"name": model_name, "deleted": True})
