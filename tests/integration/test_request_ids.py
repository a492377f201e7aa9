"""Request ids on every response and in the logs; JSON logs; no tensors or keys logged."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SAMPLE_MODELS
from tests.http_probes import wait_for
from tests.onnx_models import identity, write_model
from tests.server import RunningServer

MANAGEMENT_KEY = "mgmt-key-7f3a9c-do-not-log"
WRONG_KEY = "wrong-key-51b2e8-do-not-log"
SECRET_TEXT = "tensor-payload-c0ffee-do-not-log"
SECRET_NUMBER = 0.7071067811
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def repository(root: Path) -> Path:
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    write_model(root, "text", identity("BYTES", ["N", 2]))
    write_model(root, "mlp4", identity("FP32", ["N", 4]))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = repository(tmp_path_factory.mktemp("models"))
    env = {
        "ONNX_SERVE_LOG_LEVEL": "info",
        "ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
        "ONNX_SERVE_MAX_REQUEST_BYTES": "4096",
    }
    with RunningServer(root, env=env) as running:
        yield running


def logged(server: RunningServer, needle: str) -> str | None:
    """The first log line that contains ``needle``, once it has been written."""

    def find() -> str | None:
        return next((line for line in server.log().splitlines() if needle in line), None)

    return wait_for(find, f"a log line with {needle!r}")


def test_sane_request_id_is_echoed(server: RunningServer) -> None:
    for given in ("abc-123", "0d6f3c1e-8a4b-4f7a-9c1d-2b3e4f5a6b7c", "Root=1-5e;Parent=53;S=1"):
        r = httpx.get(server.url + "/v2/health/ready", headers={"X-Request-ID": given})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == given


def test_missing_request_id_is_generated_fresh_each_time(server: RunningServer) -> None:
    ids = {httpx.get(server.url + "/v2").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(GENERATED_ID.fullmatch(i) for i in ids), ids


@pytest.mark.parametrize(
    "given",
    ["x" * 129, "has space", 'quote"d', "semi\tcolon", "caf\u00e9", "", "line%0Abreak\\"],
)
def test_insane_request_id_is_replaced(server: RunningServer, given: str) -> None:
    r = httpx.get(server.url + "/v2", headers={"X-Request-ID": given.encode("utf-8")})
    assert r.status_code == 200, r.text
    assert GENERATED_ID.fullmatch(r.headers["x-request-id"]), r.headers


ERROR_REQUESTS = [
    ("GET", "/v2/models/nope", {}, b"", 404),
    ("GET", "/no/such/route", {}, b"", 404),
    ("DELETE", "/v2/health/ready", {}, b"", 405),
    ("POST", "/predict", {}, b"{not json", 400),
    ("POST", "/predict", {}, b"x" * 5000, 413),
    ("POST", "/v2/repository/index", {}, b"", 401),
    ("POST", "/v2/repository/index", {"Authorization": f"Bearer {WRONG_KEY}"}, b"", 401),
    ("POST", "/v2/models/digits/infer", {"Inference-Header-Content-Length": "x"}, b"{}", 400),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status"), ERROR_REQUESTS)
def test_errors_carry_the_request_id(
    server: RunningServer,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    request_id = f"err-{status}-{abs(hash((method, path, body))) % 10**8}"
    r = httpx.request(
        method, server.url + path, headers={"X-Request-ID": request_id, **headers}, content=body
    )
    assert r.status_code == status, r.text
    assert "error" in r.json()
    assert r.headers["x-request-id"] == request_id


def test_access_log_line_carries_the_id(server: RunningServer) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}]}
    r = httpx.post(
        server.url + "/v2/models/mlp4/infer", json=body, headers={"X-Request-ID": "access-1"}
    )
    assert r.status_code == 200, r.text
    line = logged(server, "[access-1]")
    assert line is not None
    assert "onnx_serve.access" in line
    assert '"POST /v2/models/mlp4/infer" 200' in line


def test_access_log_can_be_turned_off(tmp_path: Path) -> None:
    env = {"ONNX_SERVE_LOG_LEVEL": "info", "ONNX_SERVE_ACCESS_LOG": "false"}
    with RunningServer(repository(tmp_path / "models"), env=env) as server:
        r = httpx.get(server.url + "/v2/models/mlp4", headers={"X-Request-ID": "quiet-1"})
        assert r.status_code == 200, r.text
    log = server.log()
    assert "shut down: closed the sessions" in log  # info lines are still written
    assert "quiet-1" not in log and "onnx_serve.access" not in log


def test_error_log_line_carries_the_id(server: RunningServer) -> None:
    broken = server.models / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"\x08\x07 not a model")
    r = httpx.post(
        server.url + "/v2/repository/models/broken/load",
        headers={"Authorization": f"Bearer {MANAGEMENT_KEY}", "X-Request-ID": "load-broken-1"},
    )
    assert r.status_code == 422, r.text
    line = logged(server, "[load-broken-1] model broken v1 failed to load")
    assert line is not None and " ERROR " in line


def test_log_has_no_tensor_data_and_no_keys(server: RunningServer) -> None:
    auth = {"X-API-Key": MANAGEMENT_KEY}
    requests = [
        ("/v2/models/text/infer", {"inputs": [_text_tensor([SECRET_TEXT, SECRET_TEXT])]}),
        ("/v2/models/text/infer", {"inputs": [_text_tensor([SECRET_TEXT, 7])]}),
        ("/v2/models/text/infer", {"inputs": [_text_tensor([SECRET_TEXT])]}),
        ("/predict", {"model": "mlp4", "inputs": [[SECRET_NUMBER] * 4]}),
        ("/predict", {"model": "mlp4", "inputs": [[SECRET_NUMBER] * 3]}),
        ("/predict", {"model": "mlp4", "inputs": [[SECRET_TEXT] * 4]}),
        ("/v1/models/mlp4:predict", {"instances": [[SECRET_NUMBER] * 4]}),
    ]
    for path, body in requests:
        httpx.post(server.url + path, json=body, headers={"X-Request-ID": "secret-probe"})
    for headers in (
        auth,
        {"Authorization": f"Bearer {MANAGEMENT_KEY}"},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"X-API-Key": WRONG_KEY},
    ):
        r = httpx.post(
            server.url + "/v2/repository/index",
            headers={**headers, "X-Request-ID": "secret-probe-end"},
        )
        assert r.status_code in (200, 401), r.text
    assert logged(server, "[secret-probe-end]")
    text = server.log()
    assert text.count("[secret-probe]") == len(requests)
    for secret in (MANAGEMENT_KEY, WRONG_KEY, SECRET_TEXT, str(SECRET_NUMBER), "0.70710677"):
        assert secret not in text


def _text_tensor(data: list[object]) -> dict[str, object]:
    return {"name": "input", "shape": [1, len(data)], "datatype": "BYTES", "data": data}


def test_json_log_format(tmp_path: Path) -> None:
    root = repository(tmp_path / "models")
    env = {"ONNX_SERVE_LOG_LEVEL": "info", "ONNX_SERVE_LOG_FORMAT": "json"}
    with RunningServer(root, env=env, args=["--log-format", "json"]) as server:
        r = httpx.post(
            server.url + "/predict",
            json={"model": "missing", "inputs": [1]},
            headers={"X-Request-ID": "json-1"},
        )
        assert r.status_code == 404, r.text
        wait_for(lambda: "json-1" in server.log(), "the access line")
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message", "request_id"} <= r.keys() for r in records)
    access = [r for r in records if r["request_id"] == "json-1"]
    assert len(access) == 1, access
    assert access[0] | {"duration_ms": 0} == access[0] | {
        "logger": "onnx_serve.access",
        "level": "INFO",
        "method": "POST",
        "path": "/predict",
        "status": 404,
        "client": "127.0.0.1",
        "duration_ms": 0,
    }
    assert access[0]["bytes"] == len(r.content)
    assert any("shut down" in r["message"] for r in records), records[-3:]
