"""KServe v1 protocol: model readiness and ``:predict`` with ``instances``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import Inference, RegistryDep, read_body
from app.api.responses import json_response
from app.errors import BadRequest
from app.inference.plain import instances_inputs, predictions
from app.inference.service import InferenceService
from app.protocol.schemas import (
    V1_EXAMPLE,
    ErrorBody,
    V1PredictRequest,
    V1PredictResponse,
    request_body,
)
from app.protocol.v2 import loads_object

router = APIRouter(tags=["v1"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 503, 504)
}


@router.get("/v1/models/{model_name}", summary="KServe v1 model status", responses=ERRORS)
async def status(registry: RegistryDep, model_name: str) -> Response:
    registry.get(model_name)
    return json_response({"name": model_name, "ready": True})


@router.post(
    "/v1/models/{model_name}:predict",
    summary="KServe v1 predict (instances -> predictions)",
    response_model=V1PredictResponse,
    responses=ERRORS,
    openapi_extra=request_body(V1PredictRequest, V1_EXAMPLE),
    dependencies=[Inference],
)
async def predict(request: Request, model_name: str) -> Response:
    return await handle_predict(request, model_name)


async def handle_predict(request: Request, model_name: str) -> Response:
    """Answer a v1 ``:predict`` (also served as a plain route: see app/api/fastpath.py)."""
    service: InferenceService = request.app.state.service
    body = await read_body(request, service.limits.max_request_bytes)
    with service.request(model_name, None) as (model, observation):
        doc = loads_object(body)
        if "instances" not in doc:
            raise BadRequest("'instances' is missing")
        inputs = instances_inputs(model, doc["instances"], service.limits)
        results = await service.run(model, observation, inputs)
        body_out = {"predictions": predictions(model, results)}
    return json_response(body_out)


PLAIN_ROUTES = [("/v1/models/{model_name}:predict", handle_predict)]
