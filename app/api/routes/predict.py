"""The simple API: POST /predict with named nested lists."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import Inference, read_body
from app.api.responses import json_response
from app.api.routes import images
from app.errors import BadRequest
from app.inference.plain import named_inputs
from app.inference.service import InferenceService
from app.protocol.schemas import (
    PREDICT_EXAMPLE,
    ErrorBody,
    PredictRequest,
    PredictResponse,
    request_body,
)
from app.protocol.tensors import jsonable
from app.protocol.v2 import loads_object
from app.settings import Settings

router = APIRouter(tags=["predict"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 415, 503, 504)
}


def _model_field(doc: dict[str, Any]) -> tuple[str, str | None]:
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("'model' must name the model to run")
    version = doc.get("version")
    if version is not None and not isinstance(version, str | int):
        raise BadRequest("'version' must be a string or an integer")
    return name, None if version is None else str(version)


@router.post(
    "/predict",
    summary="Run a model on JSON tensors or images",
    description='Send `{"model": name, "inputs": {input: nested list}}` (or a bare nested '
    'list for a one-input model); get `{"model", "version", "outputs": {name: nested '
    "list}}`. A single example without its batch dimension is accepted and answered alike. "
    "Images come as a multipart form (`file` parts and a `model` field), a raw `image/*` "
    'body with `?model=`, or base64 JSON (`{"model", "image"}` or `"images": [...]`); they '
    'are answered with `{"model", "version", "predictions": [[{"label", "index", "score"}]]}` '
    "(see docs/images.md). The Content-Type picks the form.",
    response_model=PredictResponse | images.ImagePredictResponse,
    responses=ERRORS,
    openapi_extra=images.predict_openapi(request_body(PredictRequest, PREDICT_EXAMPLE)),
    dependencies=[Inference],
)
async def predict(request: Request) -> Response:
    return await handle_predict(request)


async def handle_predict(request: Request) -> Response:
    """Answer ``POST /predict`` (also served as a plain route: see app/api/fastpath.py)."""
    service: InferenceService = request.app.state.service
    settings: Settings = request.app.state.settings
    if images.is_upload(request):
        return await images.predict_request(request, service, settings, None)
    body = await read_body(request, service.limits.max_request_bytes)
    doc = loads_object(body)
    if images.is_image_document(doc):
        return await images.predict_request(request, service, settings, doc)
    name, version = _model_field(doc)
    with service.request(name, version) as (model, observation):
        if "inputs" not in doc:
            raise BadRequest("'inputs' is missing")
        inputs, unbatched = named_inputs(model, doc["inputs"], service.limits)
        results = await service.run(model, observation, inputs)
        outputs = {n: jsonable(a[0] if unbatched else a) for n, a in results.items()}
    return json_response({"model": model.name, "version": str(model.version), "outputs": outputs})


PLAIN_ROUTES = [("/predict", handle_predict)]
