"""Malformed model files uploaded to a live server: each is a 422, and nothing crashes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import OPSET, identity, mlp
from tests.server import RunningServer

MANAGEMENT_KEY = "model-files-key"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
VALID = mlp().SerializeToString()
UPLOADS = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")) + 5,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "server.log"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_log: Path) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    with RunningServer(
        root, env={"ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY}, log_path=server_log
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


def upload(client: httpx.Client, name: str, content: bytes) -> httpx.Response:
    return client.post(
        "/models",
        data={"name": name},
        files={"file": ("model.onnx", content, "application/octet-stream")},
    )


def refused(client: httpx.Client, tried: Counter[str], name: str, content: bytes) -> str:
    """Upload ``content``; it must be a 422; return the reason."""
    tried["uploads"] += 1
    r = upload(client, name, content)
    tried[f"status {r.status_code}"] += 1
    assert r.status_code == 422, r.text
    return str(r.json()["error"])


@UPLOADS
@given(content=st.binary(min_size=1, max_size=4096))
def test_random_bytes(client: httpx.Client, tried: Counter[str], content: bytes) -> None:
    refused(client, tried, "random", content)


@UPLOADS
@given(cut=st.integers(min_value=1, max_value=len(VALID) - 1))
def test_truncated_protobufs(client: httpx.Client, tried: Counter[str], cut: int) -> None:
    refused(client, tried, "truncated", VALID[:cut])


@UPLOADS
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4
    )
)
def test_mutated_protobufs(
    client: httpx.Client, tried: Counter[str], edits: list[tuple[int, int]]
) -> None:
    """Random byte edits: refused (422) or, when they only changed weights, served."""
    content = bytearray(VALID)
    for offset, value in edits:
        content[offset] = value
    tried["uploads"] += 1
    r = upload(client, "mutant", bytes(content))
    tried[f"status {r.status_code}"] += 1
    assert r.status_code in (201, 422), r.text
    if r.status_code == 201:
        x = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
        infer = client.post("/v2/models/mutant/infer", json={"inputs": [x]})
        assert infer.status_code < 500, infer.text
        assert client.delete("/models/mutant").status_code == 200


def with_opset(graph: onnx.GraphProto, *opsets: onnx.OperatorSetIdProto) -> bytes:
    model = helper.make_model(graph, opset_imports=list(opsets) or [helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model.SerializeToString()


def identity_graph(dims: list[int | str]) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )


def external_data(location: str) -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 4], [0.0] * 64)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "256")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[weight],
    )
    return with_opset(graph)


def custom_op() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Explode", ["x"], ["y"], domain="com.example.unknown")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    return with_opset(
        graph, helper.make_opsetid("", OPSET), helper.make_opsetid("com.example.unknown", 1)
    )


def fails_at_run_time() -> bytes:
    """Reshape [N, 4] to a constant [3]: valid structure, fails on every run."""
    shape = numpy_helper.from_array(np.array([3], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        initializer=[shape],
    )
    return with_opset(graph)


MALFORMED = {
    "empty": (b"", "empty"),
    "huge declared length": (b"\x3a\xff\xff\xff\xff\x0f" + b"\x00" * 64, "not an ONNX model"),
    "huge dims": (with_opset(identity_graph([1, 1_000_000_000])), "MiB"),
    "huge dims of a 4-d input": (with_opset(identity_graph([65536, 65536, 3, 3])), "MiB"),
    "dims past int64": (with_opset(identity_graph([2**62, 4])), ""),
    "external data outside the folder": (external_data("../../../../etc/passwd"), "outside"),
    "external data by absolute path": (external_data("/etc/passwd"), "absolute"),
    "external data not uploaded": (external_data("weights.bin"), "not there"),
    "opset newer than onnxruntime": (
        with_opset(identity_graph(["N", 4]), helper.make_opsetid("", 999)),
        "newer than onnxruntime",
    ),
    "unknown domain": (custom_op(), ""),
    "fails at run time": (fails_at_run_time(), "warm-up"),
    "a tensor, not a model": (numpy_helper.from_array(np.zeros(4)).SerializeToString(), ""),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_model_is_422(client: httpx.Client, tried: Counter[str], case: str) -> None:
    content, reason = MALFORMED[case]
    assert reason in refused(client, tried, "malformed", content)


def test_server_is_unharmed(client: httpx.Client, server_log: Path) -> None:
    """After every refusal above: still ready, a valid upload serves, no traceback logged."""
    assert client.get("/v2/health/ready").status_code == 200
    r = upload(client, "good", identity("FP32", ["N", 4]).SerializeToString())
    assert r.status_code == 201, r.text
    x = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    infer = client.post("/v2/models/good/infer", json={"inputs": [x]})
    assert infer.status_code == 200, infer.text
    names = {m["name"] for m in client.get("/models").json()["models"]}
    assert names == {"good"}, names
    text = server_log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
