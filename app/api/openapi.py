"""The OpenAPI schema: FastAPI's, with the raw-body schemas, the API keys and stable ids.

Routes read their bodies raw, so FastAPI's automatic 422 (request validation) is never sent
and is left out; the API keys are declared as security schemes (management routes need one,
inference routes take one when the server sets ``inference_api_key``); every operation has
the id of ``OPERATION_IDS``, stable for generated clients.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api import image_docs
from app.protocol.schemas import component_schemas

BEARER = "bearerKey"
HEADER_KEY = "apiKeyHeader"
SECURITY_SCHEMES = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "The management key (or, on inference routes, the inference key).",
    },
    HEADER_KEY: {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}
#: Routes that need the management key (either way of sending it).
MANAGEMENT_TAGS = {"models", "repository"}
#: Routes that take the inference key when the server has one (none is also accepted).
INFERENCE_TAGS = {"v2", "v1", "predict", "images"}
INFERENCE_METHODS = {"post"}

OPERATION_IDS: dict[tuple[str, str], str] = {
    ("get", "/"): "kserveLive",
    ("get", "/v2/health/live"): "serverLive",
    ("get", "/v2/health/ready"): "serverReady",
    ("get", "/v2"): "serverMetadata",
    ("get", "/v2/models/stats"): "allModelStatistics",
    ("get", "/v2/models/{model_name}/stats"): "modelStatistics",
    ("get", "/v2/models/{model_name}/versions/{model_version}/stats"): "modelVersionStatistics",
    ("get", "/v2/models/{model_name}"): "modelMetadata",
    ("get", "/v2/models/{model_name}/versions/{model_version}"): "modelVersionMetadata",
    ("get", "/v2/models/{model_name}/ready"): "modelReady",
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"): "modelVersionReady",
    ("get", "/v2/models/{model_name}/config"): "modelConfig",
    ("get", "/v2/models/{model_name}/versions/{model_version}/config"): "modelVersionConfig",
    ("post", "/v2/models/{model_name}/infer"): "modelInfer",
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"): "modelVersionInfer",
    ("post", "/v2/models/{model_name}/predict/image"): "modelPredictImage",
    (
        "post",
        "/v2/models/{model_name}/versions/{model_version}/predict/image",
    ): "modelVersionPredictImage",
    ("post", "/v2/repository/index"): "repositoryIndex",
    ("post", "/v2/repository/models/{model_name}/load"): "repositoryModelLoad",
    ("post", "/v2/repository/models/{model_name}/unload"): "repositoryModelUnload",
    ("get", "/v1/models"): "kserveListModels",
    ("get", "/v1/models/{model_name}"): "kserveModelStatus",
    ("post", "/v1/models/{model_name}:predict"): "kservePredict",
    ("post", "/predict"): "predict",
    ("get", "/models"): "listModels",
    ("post", "/models"): "uploadModel",
    ("delete", "/models/{model_name}"): "deleteModel",
    ("delete", "/models/{model_name}/versions/{model_version}"): "deleteModelVersion",
    ("get", "/metrics"): "prometheusMetrics",
}


def _request_validation_error(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return str(schema.get("$ref", "")).endswith("/HTTPValidationError")


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (see the module's docstring)."""
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(component_schemas())
    schemas.update(image_docs.component_schemas())
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            operation["operationId"] = OPERATION_IDS.get((method, path), operation["operationId"])
            responses = operation.get("responses", {})
            if "422" in responses and _request_validation_error(responses["422"]):
                del responses["422"]
            tags = set(operation.get("tags", []))
            if tags & MANAGEMENT_TAGS:
                operation["security"] = [{BEARER: []}, {HEADER_KEY: []}]
            elif tags & INFERENCE_TAGS and method in INFERENCE_METHODS:
                operation["security"] = [{}, {BEARER: []}, {HEADER_KEY: []}]
    return schema
