"""Pydantic models of the v2, v1 and /predict bodies, used to document the OpenAPI schema.

Hot paths decode bodies with orjson and the tensor codecs, not with these models.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class ErrorBody(BaseModel):
    error: str = Field(description="What was wrong and why.")


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 marks a dynamic dimension.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    providers: list[str] = Field(default_factory=list, description="Providers in use.")
    provider_fallback: list[str] = Field(
        default_factory=list, description="Requested providers this machine could not give."
    )
    max_batch_size: int = 0


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this tensor after the JSON header."
    )
    data: Any = Field(None, description="Row-major values, flat or nested.")


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="binary_data: bool")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output: bool; timeout: queue timeout in microseconds."
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseOutput]


class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE", "UNLOADED"]
    reason: str


class PredictRequest(BaseModel):
    model: str
    version: str | None = None
    inputs: dict[str, Any] | list[Any] = Field(
        description="{input_name: nested list}, or a nested list for a single-input model."
    )


class PredictResponse(BaseModel):
    model: str
    version: str
    outputs: dict[str, Any]


class V1PredictRequest(BaseModel):
    instances: list[Any]


class V1PredictResponse(BaseModel):
    predictions: list[Any]


#: A hand-drawn 7 for the bundled ``digits`` model (input ``image`` [N, 1, 8, 8], 1 is ink),
#: as the README's first example sends it: every example below runs as it is on that model.
SEVEN_8X8: list[list[list[float]]] = [
    [
        [0, 0.5, 1, 1, 1, 1, 0.5, 0],
        [0, 0, 0, 0, 0, 1, 0.5, 0],
        [0, 0, 0, 0, 0.5, 1, 0, 0],
        [0, 0, 0, 0, 1, 0.5, 0, 0],
        [0, 0, 0, 0.5, 1, 0, 0, 0],
        [0, 0, 0, 1, 0.5, 0, 0, 0],
        [0, 0, 0, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0],
    ]
]
V2_INFER_EXAMPLE: dict[str, Any] = {
    "id": "42",
    "inputs": [
        {
            "name": "image",
            "shape": [1, 1, 8, 8],
            "datatype": "FP32",
            "data": [value for row in SEVEN_8X8[0] for value in row],
        },
    ],
    "outputs": [{"name": "probabilities"}],
}
PREDICT_EXAMPLE: dict[str, Any] = {"model": "digits", "inputs": SEVEN_8X8}
V1_EXAMPLE: dict[str, Any] = {"instances": [SEVEN_8X8]}


REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    InferenceRequest,
    PredictRequest,
    V1PredictRequest,
)


def request_body(
    model: type[BaseModel], example: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the route reads raw.

    ``extra`` adds further media types (binary tensors, images) to the body's content.
    """
    content: dict[str, Any] = {
        "application/json": {
            "schema": {"$ref": f"#/components/schemas/{model.__name__}"},
            "example": example,
        }
    }
    content.update(extra or {})
    return {"requestBody": {"required": True, "content": content}}


def component_schemas() -> dict[str, Any]:
    """JSON schemas of the request models, for the OpenAPI ``components`` section."""
    _, top = models_json_schema(
        [(m, "validation") for m in REQUEST_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs
