"""Name and version attacks: every one is a 400 and nothing outside the repository changes."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.uploads import AUTH, KEY, model_bytes, snapshot, upload
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

BAD_NAMES = [
    "../x",
    "../outside/x",
    "..",
    ".",
    "...",
    ".hidden",
    "/abs",
    "/tmp/escape",
    "a/b",
    "a\\b",
    "a\x00b",
    "x\n",
    "a" * 65,
    "",
    " x",
    "-x",
    "_x",
    "m\u043edel",  # Cyrillic o
    "\uff4dodel",  # fullwidth m
    "mod\u00e9l",
    "..%2Fx",
    "%2e%2e",
    "a%00b",
]
BAD_VERSIONS = ["0", "-1", "01", "1.0", "1e3", "../1", "1/..", " 1", "\u0661", "\uff11", "9" * 19]
# Raw request targets: percent-encoded slashes, dots and NULs, sent exactly as written.
BAD_PATHS = [
    ("DELETE", "/models/..%2Foutside"),
    ("DELETE", "/models/%2E%2E"),
    ("DELETE", "/models/.."),
    ("DELETE", "/models/../outside"),
    ("DELETE", "/models/a%00b"),
    ("DELETE", "/models/%2Fetc"),
    ("DELETE", "/models/m%D0%BEdel"),
    ("DELETE", "/models/victim/versions/..%2F..%2Foutside"),
    ("DELETE", "/models/victim/versions/0"),
    ("DELETE", "/models/..%2Foutside/versions/1"),
    ("POST", "/v2/repository/models/..%2Foutside/load"),
    ("POST", "/v2/repository/models/..%2Foutside/unload"),
    ("POST", "/v2/repository/models/%2E%2E/load"),
]
BAD_FILE_KEYS = [
    "file:../1/model.onnx",
    "file:1/../../outside/model.onnx",
    "file:/tmp/model.onnx",
    "file:0/model.onnx",
    "file:1/weights.bin",
    "file:1/model.onnx/..",
    "file:1\\model.onnx",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the repository and, beside it, a canary folder attacks aim at."""
    base = tmp_path_factory.mktemp("names")
    (base / "outside").mkdir()
    (base / "outside" / "canary.txt").write_text("untouched")
    write_model(base / "models", "victim", mlp())
    return base


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[RunningServer]:
    env = {"ONNX_SERVE_MANAGEMENT_API_KEY": KEY}
    with RunningServer(root / "models", env=env, log_path=root.parent / "names.log") as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def unchanged(root: Path) -> Iterator[None]:
    """Fail if anything under the repository's parent folder changed during the test."""
    before = snapshot(root)
    yield
    assert snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["models", "outside"]


@pytest.mark.usefixtures("unchanged")
def test_bad_upload_names_are_400(client: httpx.Client) -> None:
    for name in BAD_NAMES:
        response = upload(client, name, model_bytes())
        assert response.status_code == 400, (name, response.text)
        assert "invalid model name" in response.json()["error"], name


@pytest.mark.usefixtures("unchanged")
def test_bad_upload_versions_are_400(client: httpx.Client) -> None:
    for version in BAD_VERSIONS:
        response = upload(client, "victim", model_bytes(), version=version)
        assert response.status_code == 400, (version, response.text)
        assert "invalid model version" in response.json()["error"], version


@pytest.mark.usefixtures("unchanged")
def test_bad_names_in_paths_are_400(server: RunningServer) -> None:
    for method, target in BAD_PATHS:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request(method, target, headers={"X-API-Key": KEY})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 400, (target, body)
        assert "invalid model" in json.loads(body)["error"], target


@pytest.mark.usefixtures("unchanged")
def test_bad_names_and_files_in_triton_loads_are_400(client: httpx.Client) -> None:
    encoded = base64.b64encode(model_bytes()).decode()
    for key in BAD_FILE_KEYS:
        response = client.post(
            "/v2/repository/models/victim/load", json={"parameters": {key: encoded}}
        )
        assert response.status_code == 400, (key, response.text)
    for name in ("m\u043edel", "...", "a" * 65):
        response = client.post(
            f"/v2/repository/models/{name}/load",
            json={"parameters": {"file:1/model.onnx": encoded}},
        )
        assert response.status_code == 400, (name, response.text)


def test_names_at_the_limits_are_accepted(client: httpx.Client, root: Path) -> None:
    for name in ("a" * 64, "A.b_c-1", "0.x"):
        response = upload(client, name, model_bytes())
        assert response.status_code == 201, (name, response.text)
        assert (root / "models" / name / "1" / "model.onnx").is_file()
        assert client.delete(f"/models/{name}").status_code == 200
    assert upload(client, "victim", model_bytes(), version="9" * 18).status_code == 201
