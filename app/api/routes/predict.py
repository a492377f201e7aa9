"""The simple API: POST /predict with named nested lists, or images."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import Request
from starlette.responses import Response

from app.api import image_docs
from app.api.body import read_body
from app.api.fastpath import HotRoute
from app.api.json_offload import plain_document
from app.api.responses import json_response
from app.api.routes import images
from app.errors import BadRequest
from app.inference.context import RequestContext
from app.inference.dataplane import DataPlane, InferenceResult
from app.inference.plain import named_inputs
from app.protocol.response_size import check_response_size
from app.protocol.schemas import (
    PREDICT_EXAMPLE,
    ErrorBody,
    PredictRequest,
    PredictResponse,
    request_body,
)
from app.protocol.tensors import jsonable
from app.protocol.v2 import InferRequest
from app.registry.model import ModelVersion

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 503, 504)
}


def _model_field(doc: dict[str, Any]) -> tuple[str, str | None]:
    name = doc.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("'model' must name the model to run")
    version = doc.get("version")
    if version is not None and not isinstance(version, str | int):
        raise BadRequest("'version' must be a string or an integer")
    return name, None if version is None else str(version)


async def predict(request: Request, context: RequestContext) -> Response:
    """Answer ``POST /predict``: JSON tensors, or an image form (see routes/images.py)."""
    dataplane: DataPlane = request.app.state.dataplane
    if images.is_upload(request):
        return await images.answer(request, context, await images.read_upload(request))
    images.require_json(request)
    body = await read_body(request, dataplane.limits.max_request_bytes)
    doc = await plain_document(request, body, dataplane.limits)
    if images.is_image_document(doc):
        return await images.answer(request, context, images.read_document(doc, request))
    name, version = _model_field(doc)

    def decode(model: ModelVersion) -> InferRequest:
        if "inputs" not in doc:
            raise BadRequest("'inputs' is missing")
        inputs, unbatched = named_inputs(model, doc["inputs"], dataplane.limits)
        return InferRequest(inputs, unbatched=unbatched)

    return await dataplane.infer(
        name, version, decode, context, partial(_response, dataplane.limits.max_response_bytes)
    )


def _response(max_response_bytes: int, result: InferenceResult) -> Response:
    check_response_size([(a, False) for a in result.outputs.values()], max_response_bytes)
    unbatched = result.request.unbatched
    outputs = {n: jsonable(a[0] if unbatched else a) for n, a in result.outputs.items()}
    model = result.model
    return json_response({"model": model.name, "version": str(model.version), "outputs": outputs})


HOT_ROUTES = [
    HotRoute(
        "/predict",
        predict,
        "Run a model on JSON tensors or images",
        tags=["predict"],
        description='Send `{"model": name, "inputs": {input: nested list}}` (or a bare nested '
        'list for a one-input model); get `{"model", "version", "outputs": {name: nested '
        "list}}`. A single example without its batch dimension is accepted and answered "
        "alike. Images come as a multipart form (`file` parts and a `model` field), a raw "
        '`image/*` body with `?model=`, or base64 JSON (`{"model", "image"}` or `"images": '
        '[...]`); they are answered with `{"model", "version", "predictions": [[{"label", '
        '"index", "score"}]]}` (see docs/images.md). The Content-Type picks the form.',
        response_model=PredictResponse | image_docs.ImagePredictResponse,
        responses=ERRORS,
        openapi_extra=image_docs.predict_openapi(request_body(PredictRequest, PREDICT_EXAMPLE)),
    )
]
