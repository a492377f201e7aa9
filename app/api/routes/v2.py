"""Open Inference Protocol v2: model metadata, readiness, config, statistics and infer."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.body import header, read_body
from app.api.deps import DataPlaneDep
from app.api.fastpath import HotRoute
from app.api.json_offload import json_decoders
from app.api.responses import BytesResponse, error_response, json_response
from app.errors import ModelNotLoaded, ServingError
from app.inference.context import RequestContext
from app.inference.dataplane import DataPlane, Decoder, InferenceResult
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
#: What the metadata routes answer besides 200 (bad version, unknown model, not ready).
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 503)}
#: What inference answers besides 200 (401: a key is needed, when the server has one).
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 503, 504)
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
    return json_response(await dataplane.model_metadata(model_name, model_version))


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
    except ModelNotLoaded:
        # Loads on its first request: ready to serve.
        return json_response({"name": model_name, "version": model_version or "", "ready": True})
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
    return json_response(await dataplane.model_config(model_name, model_version))


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
    decode: Decoder
    if len(body) > OFFLOAD_BYTES and (header_length is None or header_length > OFFLOAD_BYTES):
        # A large body is decoded in a worker process, not on the event loop.
        decoded = await json_decoders(request).run("v2_request", body, header_length, limits)
        decode = lambda _: decoded  # noqa: E731
    else:
        decode = lambda _: parse_infer_request(body, header_length, limits)  # noqa: E731
    return await dataplane.infer(
        model_name, model_version, decode, context, partial(_response, limits.max_response_bytes)
    )


def _response(max_response_bytes: int, result: InferenceResult) -> Response:
    model = result.model
    content, json_length = encode_infer_response(
        model.name, str(model.version), result.outputs, result.request, max_response_bytes
    )
    if json_length is None:
        return BytesResponse(content)
    return BytesResponse(
        content, "application/octet-stream", headers={HEADER_LENGTH: str(json_length)}
    )


_INFER: dict[str, Any] = {
    "tags": ["v2"],
    "response_model": InferenceResponse,
    "responses": INFER_ERRORS,
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
