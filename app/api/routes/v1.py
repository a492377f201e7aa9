"""KServe v1 protocol: model readiness and ``:predict`` with ``instances``."""

from __future__ import annotations

from functools import partial
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
from app.inference.dataplane import DataPlane, InferenceResult
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
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 404, 503)}
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 503, 504)
}


@router.get("/v1/models", summary="KServe v1: the names of the models served")
async def models(dataplane: DataPlaneDep) -> Response:
    return json_response({"models": dataplane.model_names()})


@router.get("/v1/models/{model_name}", summary="KServe v1 model status", responses=ERRORS)
async def status(dataplane: DataPlaneDep, model_name: str) -> Response:
    if not dataplane.model_ready(model_name):
        dataplane.model(model_name)  # raises the reason it is not served
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

    return await dataplane.infer(
        model_name, None, decode, context, partial(_response, limits.max_response_bytes)
    )


def _response(max_response_bytes: int, result: InferenceResult) -> Response:
    check_response_size([(a, False) for a in result.outputs.values()], max_response_bytes)
    return json_response({"predictions": predictions(result.model, result.outputs)})


HOT_ROUTES = [
    HotRoute(
        "/v1/models/{model_name}:predict",
        predict,
        "KServe v1 predict (instances -> predictions)",
        tags=["v1"],
        response_model=V1PredictResponse,
        responses=PREDICT_ERRORS,
        openapi_extra=request_body(V1PredictRequest, V1_EXAMPLE),
    )
]
