"""Triton's load request parameters: ``config`` (JSON text) and ``file:`` contents.

Over REST a file's contents are base64 text; over gRPC they are the bytes themselves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import Any

from app.errors import BadRequest, ModelNotFound, PayloadTooLarge
from app.registry.atomic_files import write_durably
from app.registry.install_plan import InstalledVersion, InstallPlan, VersionFile
from app.registry.installer import ModelInstaller
from app.registry.repository import validate_name
from app.registry.triton_config import config_from_load

FILE_PARAMETER = re.compile(r"file:([1-9][0-9]{0,17})/model\.onnx", re.ASCII)
# Room for the JSON around the base64 text of one upload-sized file.
JSON_OVERHEAD = 64 * 1024


def load_body_limit(max_upload_bytes: int) -> int:
    """The largest load request body: one upload-sized file in base64, plus its JSON."""
    return (max_upload_bytes + 2) // 3 * 4 + JSON_OVERHEAD


def file_parameters(parameters: dict[str, Any]) -> dict[int, str | bytes]:
    """The model files of a load request by version; 400 for any other file path."""
    files: dict[int, str | bytes] = {}
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        match = FILE_PARAMETER.fullmatch(key)
        if match is None:
            raise BadRequest(
                f"unsupported load parameter '{key:.80}': only file:<version>/model.onnx"
            )
        if not isinstance(value, str | bytes):
            raise BadRequest(f"load parameter '{key}' must be base64 text (bytes over gRPC)")
        files[int(match.group(1))] = value
    return files


def _decode(key: str, text: str | bytes, limit: int) -> bytes:
    if isinstance(text, bytes):
        if len(text) > limit:
            raise PayloadTooLarge(f"{key} is over the upload limit of {limit} bytes")
        return text
    if len(text) // 4 * 3 > limit + 2:
        raise PayloadTooLarge(f"{key} is over the upload limit of {limit} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{key} is not valid base64") from None
    if len(data) > limit:
        raise PayloadTooLarge(f"{key} is over the upload limit of {limit} bytes")
    return data


async def load_from_parameters(
    installer: ModelInstaller, name: str, parameters: dict[str, Any], max_upload_bytes: int
) -> list[InstalledVersion] | None:
    """Install what a load request carries and load it; None when it carries nothing."""
    name = validate_name(name)
    files = file_parameters(parameters)
    raw_config = parameters.get("config")
    if raw_config is not None and not isinstance(raw_config, str):
        raise BadRequest("parameters.config must be a JSON string")
    if not files and raw_config is None:
        return None
    config = config_from_load(raw_config, name) if raw_config is not None else None
    if not files and not installer.repository.has_model(name):
        raise ModelNotFound(f"model '{name}' is not in the repository")
    async with installer.stage() as stage:
        staged: list[VersionFile] = []
        for version in sorted(files):
            data = _decode(f"file:{version}/model.onnx", files[version], max_upload_bytes)
            path = stage.new_model_path()
            await asyncio.to_thread(write_durably, path, data)
            del data
            staged.append(VersionFile(path, version))
        # Triton's load with files replaces the versions it names.
        plan = InstallPlan(name=name, files=staged, config=config, overwrite=True)
        return await installer.install(stage, plan)
