"""Image requests: multipart uploads, raw ``image/*`` bodies and base64 JSON.

``POST /predict`` hands these forms here; ``POST /v2/models/{m}[/versions/{v}]/predict/image``
takes them with the model named in the path.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from app.api.body import header, read_body
from app.api.fastpath import HotRoute
from app.api.image_docs import (
    MULTIPART,
    RESPONSE_EXAMPLE,
    ImagePredictResponse,
    per_model_openapi,
)
from app.api.json_offload import plain_document
from app.api.responses import json_response
from app.errors import BadRequest, UnsupportedMediaType
from app.inference.context import RequestContext
from app.inference.dataplane import DataPlane
from app.inference.image_plan import Invert
from app.inference.images import ImageOptions
from app.inference.postprocessing import MAX_TOP_K
from app.inference.preprocessing import MEDIA_TYPES, SUPPORTED
from app.protocol.numbers import parse_int
from app.protocol.schemas import ErrorBody

OPTION_NAMES = ("top_k", "raw", "invert")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 503, 504)
}


# ---- parsing ---------------------------------------------------------------------------------


@dataclass
class ImageRequest:
    """An image request as read off the wire: the model, images (bytes or base64), options."""

    name: str | None
    version: str | None
    images: list[bytes | str] = field(default_factory=list)
    options: ImageOptions = field(default_factory=ImageOptions)


def media_type(request: Request) -> str:
    return (header(request, "content-type") or "").partition(";")[0].strip().lower()


def is_upload(request: Request) -> bool:
    """True for the multipart and raw-image forms (JSON and tensors go elsewhere)."""
    kind = media_type(request)
    return kind == MULTIPART or kind.startswith("image/")


def require_json(request: Request) -> None:
    """415 unless the body is JSON: ``application/json``, a ``+json`` type, or unlabelled."""
    kind = media_type(request)
    if kind and kind != "application/json" and not kind.endswith("+json"):
        hint = ""
        if kind == "application/x-www-form-urlencoded":
            hint = " (curl -d sends that type: add -H 'content-type: application/json')"
        raise UnsupportedMediaType(
            f"Content-Type {kind[:60]} is not accepted here{hint}: send application/json, "
            "multipart/form-data or an image/* body"
        )


def is_image_document(doc: Mapping[str, Any]) -> bool:
    return "image" in doc or "images" in doc


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise BadRequest(f"'{name}' must be true or false, got {value!r:.40}")


def _top_k(value: Any) -> int:
    if isinstance(value, str):
        return parse_int(value.strip(), "'top_k'", 1, MAX_TOP_K)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOP_K:
        raise BadRequest(f"'top_k' must be an integer from 1 to {MAX_TOP_K}, got {value!r:.40}")
    return value


def _invert(value: Any) -> Invert:
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    if isinstance(value, bool) or isinstance(value, str):
        try:
            return _flag(value, "invert")
        except BadRequest:
            pass
    raise BadRequest(f"'invert' must be true, false or auto, got {value!r:.40}")


def _text(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and name == "version":
        return str(value)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' must be a non-empty string")
    return value


def _request(values: Mapping[str, Any], images: list[bytes | str], where: str) -> ImageRequest:
    known = {"model", "version", *OPTION_NAMES}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BadRequest(
            f"unknown {where} field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    options = ImageOptions(
        top_k=_top_k(values["top_k"]) if values.get("top_k") is not None else None,
        raw=_flag(values["raw"], "raw") if values.get("raw") is not None else False,
        invert=_invert(values["invert"]) if values.get("invert") is not None else None,
    )
    return ImageRequest(
        _text(values.get("model"), "model"),
        _text(values.get("version"), "version"),
        images,
        options,
    )


async def _single(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_upload(request: Request) -> ImageRequest:
    """A multipart form (``file`` parts and option fields) or a raw image body."""
    dataplane: DataPlane = request.app.state.dataplane
    limit = dataplane.limits.max_request_bytes
    kind = media_type(request)
    query = dict(request.query_params)
    if kind != MULTIPART:
        if kind not in MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type {kind} is not supported: send {SUPPORTED} "
                f"({', '.join(sorted(MEDIA_TYPES))}), multipart/form-data or JSON"
            )
        body = await read_body(request, limit)
        return _request(query, [body], "query")
    body = await read_body(request, limit)
    parser = MultiPartParser(request.headers, _single(body), max_files=4096, max_fields=64)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"invalid multipart form: {exc.message}") from None
    try:
        images: list[bytes | str] = []
        fields: dict[str, Any] = dict(query)
        for name, value in form.multi_items():
            if name == "file":
                if not isinstance(value, UploadFile):
                    raise BadRequest("'file' must be a file part (curl -F file=@image.png)")
                part_type = (value.content_type or "").partition(";")[0].strip().lower()
                if part_type.startswith("image/") and part_type not in MEDIA_TYPES:
                    raise UnsupportedMediaType(
                        f"a 'file' part is {part_type:.60}, which is not supported: send "
                        f"{SUPPORTED}"
                    )
                images.append(await value.read())
            elif isinstance(value, UploadFile):
                raise BadRequest(f"unexpected file part '{name}': send images as 'file'")
            else:
                fields[name] = value
    finally:
        await form.close()
    if not images:
        raise BadRequest("the form has no 'file' part (curl -F file=@image.png)")
    return _request(fields, images, "form")


def read_document(doc: Mapping[str, Any], request: Request) -> ImageRequest:
    """The base64 JSON form: ``image`` or ``images`` plus options (query values as fallback)."""
    if "image" in doc and "images" in doc:
        raise BadRequest("send either 'image' or 'images', not both")
    if "image" in doc:
        if not isinstance(doc["image"], str):
            raise BadRequest("'image' must be a base64 string")
        images: list[bytes | str] = [doc["image"]]
    else:
        batch = doc["images"]
        if not isinstance(batch, list) or not all(isinstance(i, str) for i in batch):
            raise BadRequest("'images' must be a list of base64 strings")
        images = list(batch)
    values = {
        **dict(request.query_params),
        **{k: v for k, v in doc.items() if k not in ("image", "images")},
    }
    return _request(values, images, "JSON")


# ---- answering --------------------------------------------------------------------------------


async def answer(
    request: Request,
    context: RequestContext,
    parsed: ImageRequest,
    path_name: str | None = None,
    path_version: str | None = None,
) -> Response:
    """Run the parsed request on its model and encode the predictions."""
    name, version = parsed.name, parsed.version
    if path_name is not None:
        if name is not None and name != path_name:
            raise BadRequest(f"the request names model '{name}' but the path '{path_name}'")
        if path_version is not None and version is not None and version != path_version:
            raise BadRequest(f"the request names version {version} but the path {path_version}")
        name, version = path_name, path_version or version
    if name is None:
        raise BadRequest("'model' must name the model to run (a field, a key or ?model=)")
    dataplane: DataPlane = request.app.state.dataplane
    return await dataplane.classify_images(
        name, version, parsed.images, parsed.options, context, json_response
    )


async def predict_image(
    request: Request,
    context: RequestContext,
    model_name: str,
    model_version: str | None = None,
) -> Response:
    """Classify the images of a request to a model named in the path."""
    if is_upload(request):
        parsed = await read_upload(request)
    else:
        require_json(request)
        dataplane: DataPlane = request.app.state.dataplane
        body = await read_body(request, dataplane.limits.max_request_bytes)
        doc = await plain_document(request, body, dataplane.limits)
        if not is_image_document(doc):
            raise BadRequest("send 'image' or 'images' (base64), a multipart form or an image")
        parsed = read_document(doc, request)
    return await answer(request, context, parsed, model_name, model_version)


_IMAGE: dict[str, Any] = {
    "tags": ["images"],
    "response_model": ImagePredictResponse,
    "responses": {
        200: {"content": {"application/json": {"example": RESPONSE_EXAMPLE}}},
        **ERRORS,
    },
    "openapi_extra": per_model_openapi(),
}
HOT_ROUTES = [
    HotRoute(
        "/v2/models/{model_name}/predict/image",
        predict_image,
        "Classify images with a model",
        description="Send images as a multipart form (one or more `file` parts), as a raw "
        f"`image/*` body ({SUPPORTED}), or as base64 JSON (`image` or `images`); get the "
        "top-k classes per image. Several images run as one batch.",
        **_IMAGE,
    ),
    HotRoute(
        "/v2/models/{model_name}/versions/{model_version}/predict/image",
        predict_image,
        "Classify images with one model version",
        **_IMAGE,
    ),
]
