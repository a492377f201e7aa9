"""Bad input gets a clear 4xx and the server keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.onnx_models import identity, mlp, write_model
from tests.server import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "mlp", mlp())
    write_model(root, "broken", b"\x08\x07garbage")
    write_model(root, "fixed", identity(shape=[2, 2]))
    with RunningServer(root, env={"ONNX_SERVE_MAX_REQUEST_BYTES": "65536"}) as running:
        yield running


def tensor(shape: list[int], datatype: str = "FP32", **extra: object) -> dict[str, object]:
    count = 1
    for d in shape:
        count *= d
    return {"name": "x", "shape": shape, "datatype": datatype, "data": [0] * count, **extra}


CASES = [
    ("not json", 400, "not valid JSON"),
    ("[]", 400, "JSON object"),
    (json.dumps({"inputs": [tensor([1, 16], "INT64")]}), 400, "must be FP32"),
    (json.dumps({"inputs": [tensor([1, 15])]}), 400, "shape [1, 15]"),
    (json.dumps({"inputs": [tensor([100, 16])]}), 400, "max_batch_size"),
    (json.dumps({"inputs": [tensor([1, 16]) | {"name": "y"}]}), 400, "no input 'y'"),
    (json.dumps({"inputs": [tensor([1, 16])], "outputs": [{"name": "z"}]}), 400, "no output"),
    (json.dumps({"inputs": [tensor([1, 16]) | {"data": "abc"}]}), 400, "got strings"),
]


@pytest.mark.parametrize(("body", "status", "message"), CASES)
def test_bad_infer_requests(server: RunningServer, body: str, status: int, message: str) -> None:
    r = httpx.post(server.url + "/v2/models/mlp/infer", content=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_wrong_header_length_is_400(server: RunningServer) -> None:
    r = httpx.post(
        server.url + "/v2/models/mlp/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "99"},
    )
    assert r.status_code == 400, r.text


def test_oversized_body_is_413(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v2/models/mlp/infer", content=b" " * 70_000)
    assert r.status_code == 413, r.text
    assert "limit" in r.json()["error"]


def test_unknown_and_broken_models(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v2/models/nope/infer", content=b"{}")
    assert r.status_code == 404
    assert "nope" in r.json()["error"]
    r = httpx.get(server.url + "/v2/models/broken")
    assert r.status_code == 503
    assert "unavailable" in r.json()["error"]
    r = httpx.get(server.url + "/v2/models/mlp/versions/7")
    assert r.status_code == 404
    r = httpx.get(server.url + "/v2/models/mlp/versions/abc")
    assert r.status_code == 400
    r = httpx.get(server.url + "/no/such/route")
    assert r.status_code == 404
    assert "error" in r.json()


def test_model_without_batch_dimension_checks_fixed_shape(server: RunningServer) -> None:
    r = httpx.post(
        server.url + "/v2/models/fixed/infer",
        json={"inputs": [{"name": "input", "shape": [3, 2], "datatype": "FP32", "data": [0] * 6}]},
    )
    assert r.status_code == 400
    assert "expects [2, 2]" in r.json()["error"]


def test_management_needs_a_key(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v2/repository/index")
    assert r.status_code == 403
    assert "ONNX_SERVE_MANAGEMENT_API_KEY" in r.json()["error"]


def test_server_still_serves_after_bad_input(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v2/models/mlp/infer", json={"inputs": [tensor([2, 16])]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [2, 4]
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
