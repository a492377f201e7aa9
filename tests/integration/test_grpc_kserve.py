"""KServe's gRPC v2 client (``kserve.InferenceGRPCClient``), unchanged, against a real server.

The client runs in a subprocess (tests/integration/kserve_grpc_calls.py): its generated
protocol modules and tritonclient's cannot share one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.onnx_models import add_mul, write_model
from tests.server import RunningServer

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 0.5, np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "add_mul", add_mul())
    with RunningServer(root, log_path=root.parent / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def found(server: RunningServer) -> dict[str, Any]:
    """What KServe's client got from the server, call by call."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.kserve_grpc_calls", server.grpc_address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_test_process_never_loads_kserves_protocol_modules() -> None:
    # They would clash with tritonclient's (already loaded here) in protobuf's default pool.
    assert "kserve.protocol.grpc.grpc_predict_v2_pb2" not in sys.modules


def test_health_and_readiness(found: dict[str, Any]) -> None:
    assert found["live"] is True
    assert found["ready"] is True
    assert found["model_ready"] is True
    assert found["unknown_model_ready"] is False


def test_metadata(found: dict[str, Any]) -> None:
    assert found["metadata"] == {
        "name": "add_mul",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [["a", "FP32", [-1, 4]], ["b", "FP32", [-1, 4]]],
        "outputs": [["sum", "FP32", [-1, 4]], ["product", "FP32", [-1, 4]]],
    }
    assert found["server"]["name"] == "onnx-serve"
    assert "binary_tensor_data" in found["server"]["extensions"]


def test_infer_with_raw_tensors(found: dict[str, Any]) -> None:
    raw = found["raw"]
    assert (raw["id"], raw["model_name"]) == ("kserve-raw", "add_mul")
    assert raw["outputs"].keys() == {"sum", "product"}
    np.testing.assert_array_equal(np.array(raw["outputs"]["sum"], np.float32), A + B)
    np.testing.assert_array_equal(np.array(raw["outputs"]["product"], np.float32), A * B)


def test_infer_with_typed_contents_and_an_output_subset(found: dict[str, Any]) -> None:
    typed = found["typed"]
    assert typed["id"] == "kserve-typed"
    assert list(typed["outputs"]) == ["product"]
    np.testing.assert_array_equal(np.array(typed["outputs"]["product"], np.float32), A * B)


def test_errors_reach_the_client_with_their_status(found: dict[str, Any]) -> None:
    assert found["unknown_model"] == [
        "NOT_FOUND",
        "Request for unknown model: 'no-such-model' is not found",
    ]
