"""Open Inference Protocol v2: model metadata, readiness, config, statistics and infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import Inference, RegistryDep, ServiceDep, header, read_body
from app.api.responses import BytesResponse, error_response, json_response
from app.errors import ServingError
from app.inference.batching import timeout_parameter
from app.inference.images import describe as image_processing
from app.inference.service import InferenceService
from app.protocol import binary
from app.protocol.datatypes import V2_TO_TRITON_CONFIG
from app.protocol.schemas import (
    V2_INFER_EXAMPLE,
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    request_body,
)
from app.protocol.v2 import encode_infer_response, parse_infer_request
from app.registry.model import PLATFORM, ModelVersion
from app.registry.registry import ModelRegistry

router = APIRouter(tags=["v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 503, 504)
}
BINARY_BODY = {
    "application/octet-stream": {
        "schema": {"type": "string", "format": "binary"},
        "description": "JSON header (its length in Inference-Header-Content-Length) followed "
        "by the raw tensors whose inputs declare binary_data_size.",
    }
}


def model_metadata(registry: ModelRegistry, model: ModelVersion) -> dict[str, Any]:
    versions = [str(m.version) for m in registry.live() if m.name == model.name]
    return {
        "name": model.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [s.metadata() for s in model.inputs],
        "outputs": [s.metadata() for s in model.outputs],
        "providers": model.providers,
        "provider_fallback": model.fallback,
        "max_batch_size": model.max_batch_size,
        **image_processing(model),
        **model.extras,
    }


def model_config(model: ModelVersion) -> dict[str, Any]:
    """The model's configuration in Triton's shape (batch dimension left out of dims)."""
    skip = 1 if model.batched else 0

    def tensors(specs: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "data_type": V2_TO_TRITON_CONFIG[s.datatype],
                "dims": list(s.shape[skip:]),
            }
            for s in specs
        ]

    config = model.config
    on_gpu = model.provider != "CPUExecutionProvider"
    doc: dict[str, Any] = {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": model.max_batch_size,
        "input": tensors(model.inputs),
        "output": tensors(model.outputs),
        "instance_group": [
            {
                "count": config.instances.count,
                "kind": "KIND_GPU" if on_gpu else "KIND_CPU",
                "gpus": config.instances.gpus,
            }
        ],
        "version_policy": config.version_policy.model_dump(),
        "providers": model.providers,
    }
    if config.dynamic_batching is not None and config.dynamic_batching.enabled:
        batching = config.dynamic_batching
        doc["dynamic_batching"] = {
            "preferred_batch_size": batching.preferred_batch_sizes,
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
        }
    return doc


@router.get("/v2/models/stats", summary="Statistics of every live model version")
@router.get("/v2/models/{model_name}/stats", summary="Statistics of a model", responses=ERRORS)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/stats",
    summary="Statistics of one model version",
    responses=ERRORS,
)
async def stats(
    registry: RegistryDep,
    service: ServiceDep,
    model_name: str | None = None,
    model_version: str | None = None,
) -> Response:
    if model_name is None:
        models = registry.live()
    elif model_version is None:
        registry.get(model_name)
        models = [m for m in registry.live() if m.name == model_name]
    else:
        models = [registry.get(model_name, model_version)]
    entries = [
        service.metrics.stats_for(m.name, str(m.version)).as_dict(m.name, str(m.version))
        for m in models
    ]
    return json_response({"model_stats": entries})


@router.get(
    "/v2/models/{model_name}",
    summary="Model metadata (newest ready version)",
    response_model=ModelMetadata,
    responses=ERRORS,
)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    summary="Model metadata of one version",
    response_model=ModelMetadata,
    responses=ERRORS,
)
async def metadata(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> Response:
    return json_response(model_metadata(registry, registry.get(model_name, model_version)))


@router.get("/v2/models/{model_name}/ready", summary="Is the model ready", responses=ERRORS)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    summary="Is this model version ready",
    responses=ERRORS,
)
async def ready(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> Response:
    try:
        model = registry.get(model_name, model_version)
    except ServingError as exc:
        return error_response(exc.message, exc.status)
    return json_response({"name": model.name, "version": str(model.version), "ready": True})


@router.get(
    "/v2/models/{model_name}/config",
    summary="Model configuration (Triton-shaped)",
    responses=ERRORS,
)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/config",
    summary="Configuration of one model version (Triton-shaped)",
    responses=ERRORS,
)
async def config(
    registry: RegistryDep, model_name: str, model_version: str | None = None
) -> Response:
    return json_response(model_config(registry.get(model_name, model_version)))


@router.post(
    "/v2/models/{model_name}/infer",
    summary="Inference (JSON or binary tensors)",
    response_model=InferenceResponse,
    responses=ERRORS,
    openapi_extra=request_body(InferenceRequest, V2_INFER_EXAMPLE, BINARY_BODY),
    dependencies=[Inference],
)
@router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    summary="Inference on one model version (JSON or binary tensors)",
    response_model=InferenceResponse,
    responses=ERRORS,
    openapi_extra=request_body(InferenceRequest, V2_INFER_EXAMPLE, BINARY_BODY),
    dependencies=[Inference],
)
async def infer(request: Request, model_name: str, model_version: str | None = None) -> Response:
    return await handle_infer(request, model_name, model_version)


async def handle_infer(
    request: Request, model_name: str, model_version: str | None = None
) -> Response:
    """Run a v2 inference request (also mounted as a plain route: see app/api/fastpath.py)."""
    service: InferenceService = request.app.state.service
    header_length = binary.parse_header_length(header(request, HEADER_LENGTH))
    with service.request(model_name, model_version) as (model, observation):
        body = await read_body(request, service.limits.max_request_bytes)
        decoded = parse_infer_request(body, header_length, service.limits)
        wanted = [o.name for o in decoded.outputs] if decoded.outputs is not None else None
        timeout_us = timeout_parameter(decoded.parameters.get("timeout"))
        results = await service.run(
            model, observation, decoded.inputs, wanted, timeout_us=timeout_us
        )
        content, json_length = encode_infer_response(
            model.name, str(model.version), results, decoded
        )
    if json_length is None:
        return BytesResponse(content)
    return BytesResponse(
        content, "application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


PLAIN_ROUTES = [
    ("/v2/models/{model_name}/infer", handle_infer),
    ("/v2/models/{model_name}/versions/{model_version}/infer", handle_infer),
]
