"""API keys on real servers: management key, inference key, disabled and open management."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.api.errors import CHALLENGE
from app.settings import Settings
from tests.http_probes import wait_for
from tests.integration.uploads import X, model_bytes
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

MANAGEMENT = "management-key-0123456789"
INFERENCE = "inference-key-9876543210"

# (method, path, request arguments) of every management endpoint; none changes what serves.
MANAGEMENT_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/models", {}),
    ("POST", "/models", {"data": {"name": "m", "version": "1"}, "files": {"file": ("m", b"x")}}),
    ("DELETE", "/models/absent", {}),
    ("DELETE", "/models/absent/versions/1", {}),
    ("POST", "/v2/repository/index", {}),
    ("POST", "/v2/repository/models/spare/load", {}),
    ("POST", "/v2/repository/models/absent/unload", {}),
]
INFER_JSON = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                          "data": X.ravel().tolist()}]}  # fmt: skip
INFERENCE_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("/v2/models/m/infer", {"json": INFER_JSON}),
    ("/v1/models/m:predict", {"json": {"instances": X.tolist()}}),
    ("/predict", {"json": {"model": "m", "inputs": {"x": X.tolist()}}}),
]
OPEN_PATHS = ["/v2/health/live", "/v2/health/ready", "/v2", "/metrics"]


def make_repo(root: Path) -> Path:
    write_model(root, "m", mlp())
    write_model(root, "spare", mlp())
    return root


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = make_repo(tmp_path_factory.mktemp("keyed") / "models")
    env = {"ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT, "ONNX_SERVE_INFERENCE_API_KEY": INFERENCE}
    with RunningServer(repo, env=env) as server:
        yield server


@pytest.fixture(scope="module")
def keyless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with RunningServer(make_repo(tmp_path_factory.mktemp("keyless") / "models")) as server:
        yield server


@pytest.fixture(scope="module")
def open_management(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = make_repo(tmp_path_factory.mktemp("open") / "models")
    env = {"ONNX_SERVE_ALLOW_OPEN_MANAGEMENT": "true"}
    with RunningServer(repo, env=env) as server:
        yield server


def call(
    server: RunningServer, method: str, path: str, headers: dict[str, str], **kw: Any
) -> httpx.Response:
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


@pytest.mark.parametrize(("method", "path", "kwargs"), MANAGEMENT_CALLS)
def test_management_needs_the_management_key(
    keyed: RunningServer, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    refused = {
        "no key": {},
        "wrong key": {"X-API-Key": "wrong"},
        "wrong bearer": {"Authorization": "Bearer wrong"},
        "inference key": {"Authorization": f"Bearer {INFERENCE}"},
        "basic scheme": {"Authorization": f"Basic {MANAGEMENT}"},
        "bearer without a key": {"Authorization": "Bearer"},
        "key as a prefix": {"X-API-Key": MANAGEMENT[:-1]},
        "key with more": {"X-API-Key": MANAGEMENT + "0"},
    }
    for case, headers in refused.items():
        response = call(keyed, method, path, headers, **kwargs)
        assert response.status_code == 401, (case, response.text)
        assert "API key" in response.json()["error"], case
        assert response.headers["www-authenticate"] == CHALLENGE, case
    accepted = [
        {"Authorization": f"Bearer {MANAGEMENT}"},
        {"Authorization": f"bearer {MANAGEMENT}"},
        {"X-API-Key": MANAGEMENT},
    ]
    for headers in accepted:
        response = call(keyed, method, path, headers, **kwargs)
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text


@pytest.mark.parametrize(("path", "kwargs"), INFERENCE_CALLS)
def test_inference_needs_the_inference_key(
    keyed: RunningServer, path: str, kwargs: dict[str, Any]
) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": f"Bearer {MANAGEMENT}"}):
        response = call(keyed, "POST", path, headers, **kwargs)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == CHALLENGE
    for headers in ({"Authorization": f"Bearer {INFERENCE}"}, {"X-API-Key": INFERENCE}):
        response = call(keyed, "POST", path, headers, **kwargs)
        assert response.status_code == 200, response.text


def test_probes_and_metrics_need_no_key(keyed: RunningServer) -> None:
    for path in OPEN_PATHS:
        assert call(keyed, "GET", path, {}).status_code == 200, path


@pytest.mark.parametrize(("method", "path", "kwargs"), MANAGEMENT_CALLS)
def test_without_a_management_key_management_is_disabled(
    keyless: RunningServer, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    for headers in ({}, {"X-API-Key": "anything"}, {"Authorization": "Bearer anything"}):
        response = call(keyless, method, path, headers, **kwargs)
        assert response.status_code == 403, response.text
        message = response.json()["error"]
        assert "ONNX_SERVE_MANAGEMENT_API_KEY" in message
        assert "ONNX_SERVE_ALLOW_OPEN_MANAGEMENT" in message


def test_without_an_inference_key_inference_is_open(keyless: RunningServer) -> None:
    for path, kwargs in INFERENCE_CALLS:
        assert call(keyless, "POST", path, {}, **kwargs).status_code == 200, path


def test_open_management_is_an_explicit_opt_in(open_management: RunningServer) -> None:
    assert "open to anyone" in wait_for(lambda: open_management.log() or None)
    upload = call(
        open_management,
        "POST",
        "/models",
        {},
        data={"name": "added"},
        files={"file": ("m.onnx", model_bytes())},
    )
    assert upload.status_code == 201, upload.text
    assert call(open_management, "GET", "/models", {}).status_code == 200
    assert call(open_management, "DELETE", "/models/added", {}).status_code == 200


def test_settings_refuse_unsafe_combinations() -> None:
    with pytest.raises(ValidationError, match="not both"):
        Settings(management_api_key=MANAGEMENT, allow_open_management=True)
    with pytest.raises(ValidationError, match="must not be empty"):
        Settings(management_api_key="")
    with pytest.raises(ValidationError, match="must not be empty"):
        Settings(inference_api_key="")
