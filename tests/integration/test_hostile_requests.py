"""Requests and models built to break things get a clear 4xx, and reveal nothing.

Numbers sent as text (``top_k`` of 5,000 digits, ``1_0``), booleans sent as strings, keys
with stray spaces, configs asking for 3,000 threads, more waiting requests than a model can
take, a Reshape a request's values make impossible, models whose rows mix under batching,
and error texts that named the server's files.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from onnx import helper

from tests.conftest import ROOT, SAMPLE_MODELS
from tests.hostile_models import cumsum_rows, loop_in_function, reshape_by_input
from tests.http_probes import metric, wait_for
from tests.integration.uploads import AUTH, KEY, upload
from tests.onnx_models import OPSET, mlp, write_model
from tests.server import RunningServer, serve_until_exit

SEVEN = (ROOT / "docs" / "seven.png").read_bytes()
HUGE = "9" * 5000  # past Python's 4,300-digit limit for int()
MAX_QUEUED = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    write_model(root, "mlp", mlp())
    write_model(root, "reshape", reshape_by_input())
    write_model(root, "broken", b"\x08\x07 not a model")
    write_model(root, "threads", mlp(), config={"session": {"intra_op_threads": 3000}})
    write_model(root, "cumsum", cumsum_rows(), config={"dynamic_batching": {}})
    # One session, so that requests wait for it.
    write_model(root, "looping", loop_in_function(), config={"instances": {"count": 1}})
    env = {
        "ONNX_SERVE_MANAGEMENT_API_KEY": KEY,
        "ONNX_SERVE_MAX_QUEUED_REQUESTS": str(MAX_QUEUED),
    }
    with RunningServer(root, env=env) as running:
        yield running


def index_entry(server: RunningServer, name: str) -> dict[str, str]:
    r = httpx.post(server.url + "/v2/repository/index", headers=AUTH, json={})
    return next(e for e in r.json() if e["name"] == name)


def assert_400(r: httpx.Response, words: str) -> None:
    assert r.status_code == 400, r.text
    assert words in r.json()["error"], r.json()


# ---- numbers and booleans as text ---------------------------------------------------------------


def test_top_k_of_thousands_of_digits_is_400_everywhere(server: RunningServer) -> None:
    words = "'top_k' must be an integer from 1 to"
    form = httpx.post(
        server.url + "/predict",
        data={"model": "digits", "top_k": HUGE},
        files={"file": ("seven.png", SEVEN, "image/png")},
    )
    assert_400(form, words)
    raw = httpx.post(
        server.url + f"/predict?model=digits&top_k={HUGE}",
        content=SEVEN,
        headers={"Content-Type": "image/png"},
    )
    assert_400(raw, words)
    per_model = httpx.post(
        server.url + f"/v2/models/digits/predict/image?top_k={HUGE}",
        files={"file": ("seven.png", SEVEN, "image/png")},
    )
    assert_400(per_model, words)
    for odd in ("1_0", "%2B3", "٣"):
        assert_400(
            httpx.post(
                server.url + f"/predict?model=digits&top_k={odd}",
                content=SEVEN,
                headers={"Content-Type": "image/png"},
            ),
            words,
        )


@pytest.mark.parametrize("value", ["1_0", "+5", "-1", "0x10", HUGE])
def test_header_lengths_are_plain_digits(server: RunningServer, value: str) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                   "data": [0.5] * 16}]}).encode()  # fmt: skip
    r = httpx.post(
        server.url + "/v2/models/mlp/infer",
        content=body,
        headers={"Inference-Header-Content-Length": value},
    )
    assert_400(r, "Inference-Header-Content-Length must be an integer")


def test_binary_flags_must_be_booleans(server: RunningServer) -> None:
    tensor = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
    as_string = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json={"inputs": [tensor], "parameters": {"binary_data_output": "false"}},
    )
    assert_400(as_string, "binary_data_output must be true or false")
    per_output = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json={"inputs": [tensor], "outputs": [{"name": "y", "parameters": {"binary_data": 0}}]},
    )
    assert_400(per_output, "binary_data must be true or false")
    plain = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json={"inputs": [tensor], "parameters": {"binary_data_output": False}},
    )
    assert plain.status_code == 200 and "data" in plain.json()["outputs"][0], plain.text


# ---- models: thread counts, rows that mix, values that break a run ------------------------------


def test_a_config_asking_for_thousands_of_threads_is_refused(server: RunningServer) -> None:
    entry = index_entry(server, "threads")
    assert entry["state"] == "UNAVAILABLE", entry
    assert "intra_op_threads" in entry["reason"], entry


def test_batching_is_refused_for_graphs_that_mix_rows(server: RunningServer) -> None:
    entry = index_entry(server, "cumsum")
    assert entry["state"] == "UNAVAILABLE", entry
    assert "rows of output 'y' depend on other rows" in entry["reason"], entry


def test_a_shape_the_values_make_impossible_is_400(server: RunningServer) -> None:
    doc = {"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "shape", "shape": [2], "datatype": "INT64", "data": [3, 5]},
    ]}  # fmt: skip
    r = httpx.post(server.url + "/v2/models/reshape/infer", json=doc)
    assert_400(r, "cannot run on these input values")
    doc["inputs"][1]["data"] = [2, 2]
    ok = httpx.post(server.url + "/v2/models/reshape/infer", json=doc)
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["shape"] == [2, 2]


# ---- admission control ----------------------------------------------------------------------


def test_requests_beyond_the_queue_get_503_with_retry_after(server: RunningServer) -> None:
    def looping(trips: int) -> bytes:
        return json.dumps({"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "n", "shape": [1], "datatype": "INT64", "data": [trips]},
        ]}).encode()  # fmt: skip

    def inflight() -> float:
        return metric(server.url, "onnx_serve_inflight_requests", model="looping", version="1")

    held: list[http.client.HTTPConnection] = []
    try:
        # One request holds the only session (a loop of a billion trips, stopped when its
        # client leaves); MAX_QUEUED more wait for it.
        for expected in range(1, MAX_QUEUED + 2):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            connection.request("POST", "/v2/models/looping/infer", body=looping(10**9))
            held.append(connection)
            wait_for(lambda n=expected: inflight() >= n, "the request to be in flight")
        with ThreadPoolExecutor(4) as pool:
            extra = list(
                pool.map(
                    lambda _: httpx.post(
                        server.url + "/v2/models/looping/infer", content=looping(1), timeout=60
                    ),
                    range(4),
                )
            )
        for r in extra:
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            assert "wait for a session" in r.json()["error"]
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: inflight() == 0, "the held requests to end")
    ok = httpx.post(server.url + "/v2/models/looping/infer", content=looping(1), timeout=60)
    assert ok.status_code == 200, ok.text


# ---- what errors reveal -----------------------------------------------------------------------


def revealing(text: str, server: RunningServer) -> list[str]:
    """The server's own paths, host name and process id, where ``text`` shows them."""
    assert server.process is not None
    found = [s for s in (str(server.models), str(server.models.resolve()), ".staging")
             if s in text]  # fmt: skip
    if socket.gethostname() in text:
        found.append("the host name")
    if f"--{server.process.pid}--" in text or f"{os.sep}tmp{os.sep}" in text:
        found.append("a process id or temporary path")
    return found


def test_a_model_that_failed_to_load_names_no_server_path(server: RunningServer) -> None:
    r = httpx.post(server.url + "/v2/models/broken/infer", json={"inputs": []})
    assert r.status_code == 503, r.text
    assert "unavailable" in r.json()["error"]
    assert not revealing(r.text, server), r.text


def test_a_refused_upload_names_no_staging_path(server: RunningServer) -> None:
    # Valid protobuf, but an operator no runtime has: onnxruntime's error names the file.
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="example.custom")],
        "custom",
        [helper.make_tensor_value_info("x", 1, [1])],
        [helper.make_tensor_value_info("y", 1, [1])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("example.custom", 1)],
    )
    model.ir_version = 8
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        r = upload(client, "custom", model)
    assert r.status_code == 422, r.text
    assert "model.onnx" in r.text or "Frobnicate" in r.text
    assert not revealing(r.text, server), r.text


# ---- keys -------------------------------------------------------------------------------------


def test_keys_are_trimmed_and_a_blank_key_is_refused_at_start(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp", mlp())
    blank = serve_until_exit(tmp_path, "--port", "0", env={"ONNX_SERVE_MANAGEMENT_API_KEY": "   "})
    assert blank.returncode != 0
    assert "management_api_key must not be empty or only whitespace" in blank.stderr
    # A key read from a file keeps its newline: trimmed, like the keys clients send.
    env = {"ONNX_SERVE_INFERENCE_API_KEY": "secret-key\n"}
    with RunningServer(tmp_path, env=env) as running:
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                            "data": [0.5] * 16}]}  # fmt: skip
        url = running.url + "/v2/models/mlp/infer"
        for name, value in (
            ("X-API-Key", "secret-key "),
            ("X-API-Key", "secret-key\t"),
            ("Authorization", "Bearer secret-key "),
        ):
            # Sent as they are (httpx refuses to send a value with trailing spaces).
            connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
            connection.putrequest("POST", "/v2/models/mlp/infer")
            data = json.dumps(body).encode()
            connection.putheader("Content-Length", str(len(data)))
            connection.putheader(name, value)
            connection.endheaders(data)
            assert connection.getresponse().status == 200, (name, value)
            connection.close()
        assert httpx.post(url, json=body, headers={"X-API-Key": "secret"}).status_code == 401
