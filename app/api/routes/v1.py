"""KServe v1 protocol: model readiness and ``:predict`` with ``instances``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.body import read_body
from app.api.deps import DataPlaneDep
from app.api.fastpath import HotRoute
from app.api.json_offload import plain_document
from app.api.responses import json_response
from app.errors import BadRequest
from app.inference.context import RequestContext
from app.inference.dataplane import DataPlane
from app.inference.plain import instances_inputs, predictions
from app.protocol.response_size import check_response_size
from app.protocol.schemas import (
    V1_EXAMPLE,
    ErrorBody,
    V1PredictRequest,
    V1PredictResponse,
    request_body,
)
from app.protocol.v2 import InferRequest
from app.registry.model import ModelVersion

router = APIRouter(tags=["v1"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 503, 504)
}


@router.get("/v1/models/{model_name}", summary="KServe v1 model status", responses=ERRORS)
async def status(dataplane: DataPlaneDep, model_name: str) -> Response:
    dataplane.model(model_name)
    return json_response({"name": model_name, "ready": True})


async def predict(request: Request, context: RequestContext, model_name: str) -> Response:
    """Answer a v1 ``:predict``: ``instances`` (one per row) in, ``predictions`` out."""
    dataplane: DataPlane = request.app.state.dataplane
    limits = dataplane.limits
    body = await read_body(request, limits.max_request_bytes)
    doc = await plain_document(request, body, limits)

    def decode(model: ModelVersion) -> InferRequest:
        if "instances" not in doc:
            raise BadRequest("'instances' is missing")
        return InferRequest(instances_inputs(model, doc["instances"], limits))

    result = await dataplane.infer(model_name, None, decode, context)
    check_response_size([(a, False) for a in result.outputs.values()], limits.max_response_bytes)
    return json_response({"predictions": predictions(result.model, result.outputs)})


HOT_ROUTES = [
    HotRoute(
        "/v1/models/{model_name}:predict",
        predict,
        "KServe v1 predict (instances -> predictions)",
        tags=["v1"],
        response_model=V1PredictResponse,
        responses=ERRORS,
        openapi_extra=request_body(V1PredictRequest, V1_EXAMPLE),
    )
]
