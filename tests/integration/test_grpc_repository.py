"""The model repository over gRPC with tritonclient: index, unload, load, and loads that
carry a config and model files (Triton's ``config`` and ``file:`` parameters)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import numpy_helper

from tests.grpc.probes import infer_input, status
from tests.onnx_models import add_mul, mlp, write_model
from tests.server import RunningServer

KEY = {"authorization": "Bearer grpc-repository-key"}
ONES = np.ones((1, 4), np.float32)
MAX_UPLOAD_BYTES = 64 * 1024
X = np.linspace(-1, 1, 48, dtype=np.float32).reshape(3, 16)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "add_mul", add_mul())
    env = {
        "ONNX_SERVE_MANAGEMENT_API_KEY": "grpc-repository-key",
        "ONNX_SERVE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    with RunningServer(root, env=env, log_path=root.parent / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        yield client


def mlp_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """What the MLP computes, from its own weights: relu(x @ w1) @ w2."""
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return np.asarray(np.maximum(x @ weights["w1"], 0) @ weights["w2"], dtype=np.float32)


def index(client: grpcclient.InferenceServerClient) -> dict[str, tuple[str, str]]:
    answer = client.get_model_repository_index(headers=KEY)
    return {m.name: (m.version, m.state) for m in answer.models}


def add(client: grpcclient.InferenceServerClient) -> tuple[str, str]:
    return status(lambda: client.infer("add_mul", [infer_input("a", ONES), infer_input("b", ONES)]))


def test_unload_then_load_again(client: grpcclient.InferenceServerClient) -> None:
    assert index(client)["add_mul"] == ("1", "READY")
    client.unload_model("add_mul", headers=KEY)
    assert not client.is_model_ready("add_mul")
    code, message = add(client)
    assert code == "UNAVAILABLE", message
    assert "unloaded" in message
    assert index(client)["add_mul"][1] != "READY"
    client.load_model("add_mul", headers=KEY)
    assert client.is_model_ready("add_mul", "1")
    assert add(client) == ("OK", "")


def test_load_with_a_config_and_model_files(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    first, second = mlp(seed=1), mlp(seed=2)
    config = json.dumps({"max_batch_size": 8, "instances": {"count": 1}})
    client.load_model(
        "uploaded",
        headers=KEY,
        config=config,
        files={"file:1/model.onnx": first.SerializeToString()},
    )
    assert client.is_model_ready("uploaded", "1")
    assert client.get_model_config("uploaded").config.max_batch_size == 8
    result = client.infer("uploaded", [infer_input("x", X)])
    np.testing.assert_allclose(result.as_numpy("y"), mlp_output(first, X), rtol=1e-5, atol=1e-5)
    assert (server.models / "uploaded" / "1" / "model.onnx").read_bytes() == (
        first.SerializeToString()
    )
    # A second version: the newest is served (the default policy keeps the latest one).
    client.load_model(
        "uploaded", headers=KEY, files={"file:2/model.onnx": second.SerializeToString()}
    )
    assert client.get_model_metadata("uploaded").versions == ["2"]
    result = client.infer("uploaded", [infer_input("x", X)])
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("y"), mlp_output(second, X), rtol=1e-5, atol=1e-5)
    assert index(client)["uploaded"] == ("2", "READY")


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"config": "{not json"}, "not valid JSON"),
        ({"config": json.dumps({"max_batch_size": 8, "nonsense": 1})}, "nonsense"),
        ({"files": {"file:x/model.onnx": b"\0"}}, "only file:<version>/model.onnx"),
        ({"files": {"file:1/model.onnx": b"not a model"}}, "not an ONNX model"),
    ],
    ids=["config-not-json", "config-unknown-key", "file-path", "file-not-onnx"],
)
def test_loads_that_cannot_work_change_nothing(
    server: RunningServer,
    client: grpcclient.InferenceServerClient,
    parameters: dict[str, object],
    message: str,
) -> None:
    before = index(client)
    code, text = status(lambda: client.load_model("refused", headers=KEY, **parameters))  # type: ignore[arg-type]
    assert code == "INVALID_ARGUMENT", text
    assert message in text
    assert index(client) == before
    assert not (server.models / "refused").exists()
    assert not client.is_model_ready("refused")
    assert add(client) == ("OK", "")


def test_a_model_file_over_the_upload_limit_is_resource_exhausted(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    files = {"file:1/model.onnx": b"\0" * (MAX_UPLOAD_BYTES + 1)}
    code, message = status(lambda: client.load_model("too_big", headers=KEY, files=files))
    assert code == "RESOURCE_EXHAUSTED", message
    assert "over the upload limit" in message
    assert not (server.models / "too_big").exists()
    assert add(client) == ("OK", "")


def test_load_of_a_model_not_in_the_repository_is_not_found(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    code, message = status(lambda: client.load_model("absent", headers=KEY))
    assert code == "NOT_FOUND", message
    code, message = status(lambda: client.load_model("../escape", headers=KEY))
    assert code == "INVALID_ARGUMENT", message
    assert not Path(server.models.parent / "escape").exists()
