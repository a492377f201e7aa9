"""OpenAPI documentation of the image forms: schemas, examples and request bodies.

The image routes read their bodies raw; these models only describe them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.inference.postprocessing import MAX_TOP_K
from app.inference.preprocessing import MEDIA_TYPES, SUPPORTED
from app.protocol.schemas import PREDICT_EXAMPLE

MULTIPART = "multipart/form-data"
#: The canonical media type of each accepted format, as OpenAPI lists them.
IMAGE_TYPES = sorted({m for m, f in MEDIA_TYPES.items() if m == f"image/{f.lower()}"})


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


#: docs/seven.png (a held-out 7, 32x32 grayscale), so that the examples run as they are.
SEVEN = (
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAAAAABWESUoAAAAhklEQVR42r3SUQ3CYAwE4G8EIb8EUEBwgARQMCkgYR"
    "KYAxwMFDAUMAfwQJfwNhKgfbkmveQud60eXrPDETXawC1mJuZ7QjV6WGKIfUCHkuNhPmr2uIeXOvQl5tBHDzccsIhj"
    "l5hDwQUNNlgFSv6HE9a4vvUgMQc4Rwfl5xKfe2ix/4vEJOEJc+wYkM9ZX9kAAAAASUVORK5CYII="
)
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


def per_model_openapi() -> dict[str, Any]:
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
