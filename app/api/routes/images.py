"""Image requests: multipart uploads, raw ``image/*`` bodies and base64 JSON.

``POST /predict`` hands these forms here; ``POST /v2/models/{m}[/versions/{v}]/predict/image``
takes them with the model named in the path.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from app.api.deps import Inference, ServiceDep, SettingsDep, header, read_body
from app.api.responses import json_response
from app.errors import BadRequest, UnsupportedMediaType
from app.inference.image_plan import Invert
from app.inference.images import ImageOptions, predict_images
from app.inference.postprocessing import MAX_TOP_K
from app.inference.preprocessing import MEDIA_TYPES, SUPPORTED
from app.inference.service import InferenceService
from app.protocol.schemas import PREDICT_EXAMPLE, ErrorBody
from app.protocol.v2 import loads_object
from app.settings import Settings

router = APIRouter(tags=["images"])

MULTIPART = "multipart/form-data"
#: The canonical media type of each accepted format, as OpenAPI lists them.
IMAGE_TYPES = sorted({m for m, f in MEDIA_TYPES.items() if m == f"image/{f.lower()}"})
OPTION_NAMES = ("top_k", "raw", "invert")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 415, 503, 504)
}


# ---- documentation models (bodies are read raw) ------------------------------------------------


class ImageJsonRequest(BaseModel):
    """Base64 images in JSON; ``image`` for one, ``images`` for a batch (one inference)."""

    model: str | None = Field(
        None, description="The model; on /predict required here or as ?model=."
    )
    version: str | None = None
    image: str | None = Field(None, description="Base64 (or a data: URL) of one encoded image.")
    images: list[str] | None = Field(None, description="Base64 images, run as one batch.")
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="Classes per image.")
    raw: bool = Field(False, description="Also return the raw output tensors.")
    invert: bool | Literal["auto"] | None = Field(
        None, description="Override the model's preprocess.invert for this request."
    )


class ImagePrediction(BaseModel):
    label: str | None = Field(None, description="From labels.txt; absent without one.")
    index: int
    score: float


class ImagePredictResponse(BaseModel):
    model: str
    version: str
    predictions: list[list[ImagePrediction]] = Field(description="One list per image, best first.")
    outputs: dict[str, Any] | None = Field(None, description="Raw outputs, with raw=true.")


SEVEN = "iVBORw0KGgo...(base64 of seven.png)"
IMAGE_EXAMPLE: dict[str, Any] = {"model": "digits", "image": SEVEN, "top_k": 3}
IMAGES_EXAMPLE: dict[str, Any] = {"model": "digits", "images": [SEVEN, SEVEN], "top_k": 1}
RESPONSE_EXAMPLE: dict[str, Any] = {
    "model": "digits",
    "version": "1",
    "predictions": [
        [
            {"label": "7", "index": 7, "score": 0.998},
            {"label": "9", "index": 9, "score": 0.001},
            {"label": "3", "index": 3, "score": 0.0004},
        ]
    ],
}


def _query_parameters(with_model: bool) -> list[dict[str, Any]]:
    described = {
        "model": ("string", "The model (raw image bodies; forms and JSON may name it inside)."),
        "version": ("string", "A model version; default: the newest ready one."),
        "top_k": ("integer", "Classes per image (default: the model's postprocess.top_k, 5)."),
        "raw": ("boolean", "Also return the raw output tensors."),
        "invert": ("string", "true, false or auto: override the model's preprocess.invert."),
    }
    names = [n for n in described if with_model or n not in ("model", "version")]
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": described[name][0]},
            "description": described[name][1],
        }
        for name in names
    ]


def image_content(with_model: bool) -> dict[str, Any]:
    """OpenAPI request content of the multipart and raw image forms."""
    properties: dict[str, Any] = {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": f"One or more images ({SUPPORTED}); several run as one batch.",
        },
        "top_k": {"type": "integer", "minimum": 1},
        "raw": {"type": "boolean"},
        "invert": {"type": "string", "enum": ["true", "false", "auto"]},
    }
    if with_model:
        properties = {"model": {"type": "string"}, "version": {"type": "string"}, **properties}
    content: dict[str, Any] = {
        MULTIPART: {
            "schema": {
                "type": "object",
                "required": ["file", "model"] if with_model else ["file"],
                "properties": properties,
            },
            "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}},
            "example": {
                **({"model": "digits"} if with_model else {}),
                "file": ["(the bytes of seven.png)"],
                "top_k": 3,
            },
        }
    }
    for media_type in IMAGE_TYPES:
        content[media_type] = {
            "schema": {"type": "string", "format": "binary"},
            "description": "The encoded image; options go in the query.",
        }
    return content


COMPONENTS = "#/components/schemas/"


def component_schemas() -> dict[str, Any]:
    """Schemas the image forms refer to, for the OpenAPI ``components`` section."""
    return {
        "ImageJsonRequest": ImageJsonRequest.model_json_schema(),
        "PredictJsonRequest": {
            "title": "PredictJsonRequest",
            "description": "JSON tensors (`inputs`) or base64 images (`image` / `images`).",
            "oneOf": [
                {"$ref": f"{COMPONENTS}PredictRequest"},
                {"$ref": f"{COMPONENTS}ImageJsonRequest"},
            ],
            "examples": [PREDICT_EXAMPLE, IMAGE_EXAMPLE, IMAGES_EXAMPLE],
        },
    }


def predict_openapi(tensor_body: dict[str, Any]) -> dict[str, Any]:
    """Extend the JSON-tensor ``openapi_extra`` of /predict with every image form."""
    content = tensor_body["requestBody"]["content"]
    content["application/json"]["schema"] = {"$ref": f"{COMPONENTS}PredictJsonRequest"}
    content.update(image_content(with_model=True))
    return {**tensor_body, "parameters": _query_parameters(with_model=True)}


def _per_model_openapi() -> dict[str, Any]:
    content: dict[str, Any] = {
        "application/json": {
            "schema": {"$ref": f"{COMPONENTS}ImageJsonRequest"},
            "example": {k: v for k, v in IMAGE_EXAMPLE.items() if k != "model"},
        },
        **image_content(with_model=False),
    }
    return {
        "requestBody": {"required": True, "content": content},
        "parameters": _query_parameters(with_model=False),
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


def is_image_document(doc: Mapping[str, Any]) -> bool:
    return "image" in doc or "images" in doc


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise BadRequest(f"'{name}' must be true or false, got {value!r:.40}")


def _top_k(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
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


async def read_upload(request: Request, limit: int) -> ImageRequest:
    """A multipart form (``file`` parts and option fields) or a raw image body."""
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
    parsed: ImageRequest,
    service: InferenceService,
    settings: Settings,
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
    with service.request(name, version) as (model, observation):
        body = await predict_images(
            service, model, observation, parsed.images, parsed.options, settings.max_image_pixels
        )
    return json_response(body)


async def predict_request(
    request: Request, service: InferenceService, settings: Settings, doc: Mapping[str, Any] | None
) -> Response:
    """/predict's image forms: ``doc`` is the parsed JSON body, or None for uploads."""
    if doc is None:
        parsed = await read_upload(request, service.limits.max_request_bytes)
    else:
        parsed = read_document(doc, request)
    return await answer(parsed, service, settings)


@router.post(
    "/v2/models/{model_name}/predict/image",
    summary="Classify images with a model",
    description="Send images as a multipart form (one or more `file` parts), as a raw "
    f"`image/*` body ({SUPPORTED}), or as base64 JSON (`image` or `images`); get the top-k "
    "classes per image. Several images run as one batch.",
    response_model=ImagePredictResponse,
    responses={200: {"content": {"application/json": {"example": RESPONSE_EXAMPLE}}}, **ERRORS},
    openapi_extra=_per_model_openapi(),
    dependencies=[Inference],
)
@router.post(
    "/v2/models/{model_name}/versions/{model_version}/predict/image",
    summary="Classify images with one model version",
    response_model=ImagePredictResponse,
    responses={200: {"content": {"application/json": {"example": RESPONSE_EXAMPLE}}}, **ERRORS},
    openapi_extra=_per_model_openapi(),
    dependencies=[Inference],
)
async def predict_image(
    request: Request,
    service: ServiceDep,
    settings: SettingsDep,
    model_name: str,
    model_version: str | None = None,
) -> Response:
    if is_upload(request):
        parsed = await read_upload(request, service.limits.max_request_bytes)
    else:
        body = await read_body(request, service.limits.max_request_bytes)
        doc = loads_object(body)
        if not is_image_document(doc):
            raise BadRequest("send 'image' or 'images' (base64), a multipart form or an image")
        parsed = read_document(doc, request)
    return await answer(parsed, service, settings, model_name, model_version)
