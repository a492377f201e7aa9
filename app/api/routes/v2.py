"""Open Inference Protocol v2: model metadata, readiness, config, statistics and infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.body import header, read_body
from app.api.deps import DataPlaneDep
from app.api.fastpath import HotRoute
from app.api.json_offload import json_decoders
from app.api.responses import BytesResponse, error_response, json_response
from app.errors import ServingError
from app.inference.context import RequestContext
from app.inference.dataplane import DataPlane
from app.protocol import binary
from app.protocol.json_bodies import OFFLOAD_BYTES
from app.protocol.schemas import (
    V2_INFER_EXAMPLE,
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    request_body,
)
from app.protocol.v2 import encode_infer_response, parse_infer_request

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


@router.get("/v2/models/stats", summary="Statistics of every live model version")
@router.get("/v2/models/{model_name}/stats", summary="Statistics of a model", responses=ERRORS)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/stats",
    summary="Statistics of one model version",
    responses=ERRORS,
)
async def stats(
    dataplane: DataPlaneDep, model_name: str | None = None, model_version: str | None = None
) -> Response:
    return json_response({"model_stats": dataplane.statistics(model_name, model_version)})


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
    dataplane: DataPlaneDep, model_name: str, model_version: str | None = None
) -> Response:
    return json_response(dataplane.model_metadata(model_name, model_version))


@router.get("/v2/models/{model_name}/ready", summary="Is the model ready", responses=ERRORS)
@router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    summary="Is this model version ready",
    responses=ERRORS,
)
async def ready(
    dataplane: DataPlaneDep, model_name: str, model_version: str | None = None
) -> Response:
    try:
        model = dataplane.model(model_name, model_version)
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
    dataplane: DataPlaneDep, model_name: str, model_version: str | None = None
) -> Response:
    return json_response(dataplane.model_config(model_name, model_version))


async def infer(
    request: Request,
    context: RequestContext,
    model_name: str,
    model_version: str | None = None,
) -> Response:
    """Run a v2 inference request: JSON, or a JSON header followed by binary tensors."""
    dataplane: DataPlane = request.app.state.dataplane
    limits = dataplane.limits
    header_length = binary.parse_header_length(header(request, HEADER_LENGTH))
    body = await read_body(request, limits.max_request_bytes)
    if len(body) > OFFLOAD_BYTES and (header_length is None or header_length > OFFLOAD_BYTES):
        decoded = await json_decoders(request).run("v2_request", body, header_length, limits)
        result = await dataplane.infer(model_name, model_version, lambda _: decoded, context)
    else:
        result = await dataplane.infer(
            model_name,
            model_version,
            lambda _: parse_infer_request(body, header_length, limits),
            context,
        )
    model = result.model
    content, json_length = encode_infer_response(
        model.name, str(model.version), result.outputs, result.request, limits.max_response_bytes
    )
    if json_length is None:
        return BytesResponse(content)
    return BytesResponse(
        content, "application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


_INFER: dict[str, Any] = {
    "tags": ["v2"],
    "response_model": InferenceResponse,
    "responses": ERRORS,
    "openapi_extra": request_body(InferenceRequest, V2_INFER_EXAMPLE, BINARY_BODY),
}
HOT_ROUTES = [
    HotRoute(
        "/v2/models/{model_name}/infer", infer, "Inference (JSON or binary tensors)", **_INFER
    ),
    HotRoute(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        infer,
        "Inference on one model version (JSON or binary tensors)",
        **_INFER,
    ),
]
