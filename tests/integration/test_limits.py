"""Every request limit in Settings, on a real server: a clear 4xx, never a 5xx.

Image pixels (decompression bombs) are tested in test_image_errors.py and the upload size in
test_upload.py (declared and streamed); the rest is here.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.onnx_models import add_mul, identity, mlp, write_model
from tests.server import RunningServer

MAX_REQUEST_BYTES = 65536
MAX_ELEMENTS = 1000
MAX_DEPTH = 8
MAX_INPUTS = 3
MAX_BYTES_ELEMENT = 64
LIMITS = {
    "ONNX_SERVE_MAX_REQUEST_BYTES": MAX_REQUEST_BYTES,
    "ONNX_SERVE_MAX_TENSOR_ELEMENTS": MAX_ELEMENTS,
    "ONNX_SERVE_MAX_JSON_DEPTH": MAX_DEPTH,
    "ONNX_SERVE_MAX_INPUTS": MAX_INPUTS,
    "ONNX_SERVE_MAX_BYTES_ELEMENT": MAX_BYTES_ELEMENT,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "mlp", mlp())
    write_model(root, "batch4", mlp(), config={"max_batch_size": 4})
    write_model(root, "pair", add_mul(width=16))
    write_model(root, "text", identity("BYTES", ["N", 2]))
    env = {k: str(v) for k, v in LIMITS.items()}
    with RunningServer(root, env=env) as running:
        yield running


def v2_tensor(
    name: str, shape: list[int], data: object, datatype: str = "FP32"
) -> dict[str, object]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def rows(n: int, width: int = 16) -> list[list[float]]:
    return [[0.5] * width for _ in range(n)]


def nested(depth: int, leaf: object = 0.5) -> object:
    value: object = leaf
    for _ in range(depth):
        value = [value]
    return value


def post(server: RunningServer, path: str, body: object, **kwargs: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body, **kwargs)  # type: ignore[arg-type]


def assert_refused(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()


# ---- request body bytes: 413 while streaming ---------------------------------------------------


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP response head and return its status and raw bytes read so far."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("path", ["/v2/models/mlp/infer", "/predict", "/v1/models/mlp:predict"])
def test_chunked_body_is_refused_before_it_ends(server: RunningServer, path: str) -> None:
    """A chunked body with no Content-Length gets its 413 while the client is still sending."""
    host, port = server.host_port.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n\r\n".encode()
        )
        chunk = b"[" + b" " * 8190 + b"\n"
        for _ in range(MAX_REQUEST_BYTES // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # The last chunk (0\r\n\r\n) is never sent: a 413 now can only come from streaming.
        status, head = read_status(sock)
    assert status == 413, head
    assert b"x-request-id" in head.lower()


def test_declared_length_over_the_limit_is_refused_before_any_body(server: RunningServer) -> None:
    host, port = server.host_port.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Length: {10**12}\r\n\r\n".encode()
        )
        status, head = read_status(sock)
    assert status == 413, head


def test_body_of_exactly_the_limit_is_accepted(server: RunningServer) -> None:
    doc = json.dumps({"model": "mlp", "inputs": rows(1)}).encode()
    padded = doc + b" " * (MAX_REQUEST_BYTES - len(doc))
    ok = httpx.post(server.url + "/predict", content=padded)
    assert ok.status_code == 200, ok.text
    over = httpx.post(server.url + "/predict", content=padded + b" ")
    assert_refused(over, 413, "over the limit")


# ---- tensor elements ---------------------------------------------------------------------------


def test_tensor_elements_v2_json_and_binary(server: RunningServer) -> None:
    ok = post(server, "/v2/models/mlp/infer", {"inputs": [v2_tensor("x", [62, 16], rows(62))]})
    assert ok.status_code == 200, ok.text
    over = post(server, "/v2/models/mlp/infer", {"inputs": [v2_tensor("x", [63, 16], rows(63))]})
    assert_refused(over, 400, "over the limit")
    # A shape that claims many elements is refused before any data is looked at.
    huge = {"name": "x", "shape": [2**40, 16], "datatype": "FP32", "data": [0.5]}
    assert_refused(post(server, "/v2/models/mlp/infer", {"inputs": [huge]}), 400, "limit")
    # Zero elements, but dimensions numpy cannot hold (these were 500s).
    for shape in ([2**63, 0], [0, 2**64 - 1]):
        empty = {"name": "x", "shape": shape, "datatype": "FP32", "data": []}
        assert_refused(post(server, "/v2/models/mlp/infer", {"inputs": [empty]}), 400, "over")
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [63, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 63 * 16 * 4},
                }
            ]
        }  # fmt: skip
    ).encode()
    binary = httpx.post(
        server.url + "/v2/models/mlp/infer",
        content=header + np.zeros(63 * 16, np.float32).tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert_refused(binary, 400, "over the limit")


def test_tensor_elements_count_across_inputs(server: RunningServer) -> None:
    inputs = [v2_tensor("a", [32, 16], rows(32)), v2_tensor("b", [32, 16], rows(32))]
    assert_refused(post(server, "/v2/models/pair/infer", {"inputs": inputs}), 400, "elements")
    named = {"model": "pair", "inputs": {"a": rows(32), "b": rows(32)}}
    assert_refused(post(server, "/predict", named), 400, "elements")
    instances = {"instances": [{"a": [0.5] * 16, "b": [0.5] * 16}] * 32}
    assert_refused(post(server, "/v1/models/pair:predict", instances), 400, "elements")
    fits = {"model": "pair", "inputs": {"a": rows(31), "b": rows(31)}}
    assert post(server, "/predict", fits).status_code == 200


def test_tensor_elements_plain_json(server: RunningServer) -> None:
    assert_refused(post(server, "/predict", {"model": "mlp", "inputs": rows(63)}), 400, "limit")
    r = post(server, "/v1/models/mlp:predict", {"instances": rows(63)})
    assert_refused(r, 400, "limit")


# ---- batch size --------------------------------------------------------------------------------


def test_batch_size(server: RunningServer) -> None:
    ok = post(server, "/v2/models/batch4/infer", {"inputs": [v2_tensor("x", [4, 16], rows(4))]})
    assert ok.status_code == 200, ok.text
    over = post(server, "/v2/models/batch4/infer", {"inputs": [v2_tensor("x", [5, 16], rows(5))]})
    assert_refused(over, 400, "max_batch_size 4")
    assert_refused(post(server, "/predict", {"model": "batch4", "inputs": rows(5)}), 400, "batch")
    r = post(server, "/v1/models/batch4:predict", {"instances": rows(5)})
    assert_refused(r, 400, "max_batch_size")


# ---- JSON nesting depth ------------------------------------------------------------------------


def test_json_depth(server: RunningServer) -> None:
    deep = v2_tensor("x", [1, 16], nested(MAX_DEPTH + 1))
    assert_refused(post(server, "/v2/models/mlp/infer", {"inputs": [deep]}), 400, "nested deeper")
    r = post(server, "/predict", {"model": "mlp", "inputs": nested(MAX_DEPTH + 1)})
    assert_refused(r, 400, "nested deeper")
    r = post(server, "/v1/models/mlp:predict", {"instances": nested(MAX_DEPTH + 1)})
    assert_refused(r, 400, "nested deeper")
    # Deeper than the JSON parser itself goes: still a 400.
    body = b'{"model": "mlp", "inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert_refused(httpx.post(server.url + "/predict", content=body), 400, "JSON")


def test_ragged_deep_data_is_refused(server: RunningServer) -> None:
    data = [[0.5] * 16, nested(MAX_DEPTH + 1)]
    r = post(server, "/v2/models/mlp/infer", {"inputs": [v2_tensor("x", [2, 16], data)]})
    assert r.status_code == 400, r.text
    r = post(server, "/predict", {"model": "mlp", "inputs": data})
    assert r.status_code == 400, r.text


# ---- number of inputs --------------------------------------------------------------------------


def test_number_of_inputs(server: RunningServer) -> None:
    four = [v2_tensor(f"x{i}", [1, 16], rows(1)) for i in range(MAX_INPUTS + 1)]
    assert_refused(post(server, "/v2/models/mlp/infer", {"inputs": four}), 400, "over the limit")
    named = {"model": "mlp", "inputs": {f"x{i}": rows(1) for i in range(MAX_INPUTS + 1)}}
    assert_refused(post(server, "/predict", named), 400, "over the limit")
    instances = {"instances": [{f"x{i}": [0.5] * 16 for i in range(MAX_INPUTS + 1)}]}
    assert post(server, "/v1/models/pair:predict", instances).status_code == 400


# ---- BYTES element length ----------------------------------------------------------------------


def bytes_elements(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.mark.parametrize(
    ("element", "status"),
    [("a" * MAX_BYTES_ELEMENT, 200), ("a" * (MAX_BYTES_ELEMENT + 1), 400), ("\u20ac" * 22, 400)],
)
def test_bytes_element_length(server: RunningServer, element: str, status: int) -> None:
    tensor = v2_tensor("input", [1, 2], [element, "b"], "BYTES")
    r = post(server, "/v2/models/text/infer", {"inputs": [tensor]})
    assert r.status_code == status, r.text
    raw = bytes_elements([element.encode(), b"b"])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }  # fmt: skip
    ).encode()
    r = httpx.post(
        server.url + "/v2/models/text/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == status, r.text
    r = post(server, "/predict", {"model": "text", "inputs": [[element, "b"]]})
    assert r.status_code == status, r.text
    if status == 400:
        assert "over" in r.json()["error"]
