"""API keys over gRPC metadata (``authorization: Bearer`` or ``x-api-key``): the inference
key guards inference, the management key the repository; health and metadata stay open."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.grpc.probes import infer_input, status
from tests.onnx_models import add_mul, write_model
from tests.server import RunningServer

INFERENCE_KEY = "grpc-inference-key"
MANAGEMENT_KEY = "grpc-management-key"
ONES = np.ones((1, 4), np.float32)


def repository(root: Path) -> Path:
    write_model(root, "add_mul", add_mul())
    return root


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with both keys set."""
    root = repository(tmp_path_factory.mktemp("keyed"))
    env = {
        "ONNX_SERVE_INFERENCE_API_KEY": INFERENCE_KEY,
        "ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
    }
    with RunningServer(root, env=env, log_path=root.parent / "keyed.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(keyed: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(keyed.grpc_address) as client:
        yield client


def infer(client: grpcclient.InferenceServerClient, headers: dict[str, str] | None) -> object:
    return client.infer(
        "add_mul", [infer_input("a", ONES), infer_input("b", ONES)], headers=headers
    )


def test_inference_needs_the_inference_key(client: grpcclient.InferenceServerClient) -> None:
    code, message = status(lambda: infer(client, None))
    assert code == "UNAUTHENTICATED", message
    assert "inference needs an API key" in message
    for wrong in (
        {"authorization": "Bearer wrong"},
        {"x-api-key": "wrong"},
        # The management key does not open inference.
        {"authorization": f"Bearer {MANAGEMENT_KEY}"},
    ):
        code, message = status(lambda: infer(client, wrong))  # noqa: B023 - called at once
        assert code == "PERMISSION_DENIED", (wrong, message)
    for right in ({"authorization": f"Bearer {INFERENCE_KEY}"}, {"x-api-key": INFERENCE_KEY}):
        assert status(lambda: infer(client, right)) == ("OK", "")  # noqa: B023


def test_streams_need_the_inference_key(keyed: RunningServer) -> None:
    request = service_pb2.ModelInferRequest(model_name="add_mul", id="streamed")
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(ONES.tobytes())
    with grpc.insecure_channel(keyed.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            ((("authorization", "Bearer wrong"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.ModelStreamInfer(iter([request]), metadata=metadata, timeout=30))
            assert refused.value.code() == code
        answers = list(
            stub.ModelStreamInfer(
                iter([request, request]),
                metadata=(("authorization", f"Bearer {INFERENCE_KEY}"),),
                timeout=30,
            )
        )
    assert [(a.error_message, a.infer_response.id) for a in answers] == [("", "streamed")] * 2


def test_health_and_metadata_need_no_key(
    keyed: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    # As over REST: probes and descriptions are open, they reveal no data.
    calls: dict[str, Callable[[], object]] = {
        "live": client.is_server_live,
        "ready": client.is_server_ready,
        "model ready": lambda: client.is_model_ready("add_mul"),
        "server metadata": client.get_server_metadata,
        "model metadata": lambda: client.get_model_metadata("add_mul"),
        "model config": lambda: client.get_model_config("add_mul"),
        "statistics": lambda: client.get_inference_statistics("add_mul"),
    }
    for what, call in calls.items():
        assert status(call) == ("OK", ""), what
    assert client.is_model_ready("add_mul")
    with grpc.insecure_channel(keyed.grpc_address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_each_key_opens_only_its_own_calls(client: grpcclient.InferenceServerClient) -> None:
    inference = {"authorization": f"Bearer {INFERENCE_KEY}"}
    code, message = status(lambda: client.get_model_repository_index(headers=inference))
    assert code == "PERMISSION_DENIED", message
    management = {"x-api-key": MANAGEMENT_KEY}
    index = client.get_model_repository_index(headers=management)
    assert [(m.name, m.state) for m in index.models] == [("add_mul", "READY")]


def test_management_is_off_without_a_management_key(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    server: RunningServer = start_server(repository(tmp_path / "models"))
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        calls: dict[str, Callable[[dict[str, str] | None], object]] = {
            "index": lambda headers: client.get_model_repository_index(headers=headers),
            "load": lambda headers: client.load_model("add_mul", headers=headers),
            "unload": lambda headers: client.unload_model("add_mul", headers=headers),
        }
        for what, call in calls.items():
            for headers in (None, {"authorization": "Bearer anything"}):
                code, message = status(lambda: call(headers))  # noqa: B023 - called at once
                assert code == "PERMISSION_DENIED", (what, message)
                assert "management endpoints are disabled" in message
        # Inference needs no key when none is set.
        assert status(lambda: infer(client, None)) == ("OK", "")
        assert client.is_model_ready("add_mul")
