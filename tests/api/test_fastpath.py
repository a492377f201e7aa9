"""Hot inference routes are declared once: the OpenAPI schema and the fast path agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from app.api.fastpath import ServingApp, route_path
from app.main import create_app
from app.settings import Settings

# The tags of the inference operations, every one of which must be served by the fast path.
INFERENCE_TAGS = {"v2", "v1", "predict", "images"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> ServingApp:
    models = tmp_path_factory.mktemp("models")
    built = create_app(Settings(model_repository=Path(models), grpc_port=0))
    assert isinstance(built, ServingApp)
    return built


def example_path(path: str) -> str:
    return re.sub(r"\{([a-z_]+)(:[a-z]+)?\}", lambda m: f"x-{m.group(1)}", path)


def scope(path: str) -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": path, "root_path": ""}


def test_every_inference_operation_is_on_the_fast_path_and_documented(app: ServingApp) -> None:
    assert app.plain_routes is not None
    plain = set(app.plain_routes.paths)
    schema = app.openapi()["paths"]
    documented = {
        path
        for path, operations in schema.items()
        if "post" in operations
        and INFERENCE_TAGS & set(operations["post"].get("tags", []))
        and not path.startswith("/v2/repository")
    }
    assert plain == documented
    assert {"/v2/models/{model_name}/infer", "/v1/models/{model_name}:predict", "/predict"} <= plain


def test_no_fastapi_route_is_shadowed_by_a_different_hot_route(app: ServingApp) -> None:
    assert app.plain_routes is not None
    for route in app.routes:
        if not isinstance(route, APIRoute) or "POST" not in route.methods:
            continue
        matched = app.plain_routes.match(scope(example_path(route.path)))
        if route.path in app.plain_routes.paths:
            assert matched is not None, route.path
        else:
            assert matched is None, f"{route.path} would be answered by a hot route"


def test_route_path_strips_the_root_path() -> None:
    assert route_path({"path": "/api/predict", "root_path": "/api"}) == "/predict"
    assert route_path({"path": "/apix/predict", "root_path": "/api"}) == "/apix/predict"
    assert route_path({"path": "/predict"}) == "/predict"
