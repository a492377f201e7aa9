"""Every way a gRPC call can fail, with the status code clients match on; the server and its
other models keep serving after each. (Queue full is in test_grpc_batching.py, queue
timeouts in test_grpc_timeouts.py, keys for inference in test_grpc_auth.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.grpc.probes import infer_input, status
from tests.onnx_models import add_mul, failing_warmup, write_model
from tests.server import RunningServer

MANAGEMENT_KEY = "grpc-management-key"
MAX_REQUEST_BYTES = 1 << 20
ONES = np.ones((2, 4), np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "add_mul", add_mul())
    # Warm-up samples this graph refuses (a Range with a zero step): the load fails. (On
    # generated inputs alone the warm-up would only be skipped, the model still served.)
    write_model(root, "broken", failing_warmup(), config={"warmup": {"samples": "zeros.npz"}})
    zeros = {name: np.float32(0) for name in ("start", "limit", "delta")}
    np.savez(root / "broken" / "zeros.npz", **zeros)  # type: ignore[arg-type]
    env = {
        "ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
        "ONNX_SERVE_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    }
    with RunningServer(root, env=env, log_path=root.parent / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def still_serving(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer("add_mul", [infer_input("a", ONES), infer_input("b", ONES)])
    np.testing.assert_array_equal(result.as_numpy("sum"), ONES * 2)


def test_unknown_models_and_versions_are_not_found(
    client: grpcclient.InferenceServerClient,
) -> None:
    calls: dict[str, Callable[[], object]] = {
        "infer": lambda: client.infer("nope", [infer_input("a", ONES)]),
        "infer version": lambda: client.infer(
            "add_mul", [infer_input("a", ONES), infer_input("b", ONES)], model_version="9"
        ),
        "metadata": lambda: client.get_model_metadata("nope"),
        "metadata version": lambda: client.get_model_metadata("add_mul", "9"),
        "config": lambda: client.get_model_config("nope"),
        "statistics": lambda: client.get_inference_statistics("nope"),
        "statistics version": lambda: client.get_inference_statistics("add_mul", "9"),
    }
    for what, call in calls.items():
        code, message = status(call)
        assert code == "NOT_FOUND", (what, message)
        assert message.startswith("Request for unknown model: '"), what
        assert message.endswith("is not found"), what
    still_serving(client)


def message(**changes: object) -> service_pb2.ModelInferRequest:
    """A valid request for add_mul, with ``changes`` applied to it."""
    request = service_pb2.ModelInferRequest(model_name="add_mul")
    for name in ("a", "b"):
        request.inputs.add(name=name, datatype="FP32", shape=[2, 4])
        request.raw_input_contents.append(ONES.tobytes())
    for path, value in changes.items():
        if path == "version":
            request.model_version = str(value)
        elif path == "output":
            request.outputs.add(name=str(value))
        elif path == "drop_input":
            del request.inputs[1]
            del request.raw_input_contents[1]
        elif path == "extra_input":
            request.inputs.add(name=str(value), datatype="FP32", shape=[2, 4])
            request.raw_input_contents.append(ONES.tobytes())
        elif path == "raw":
            request.raw_input_contents[0] = value  # type: ignore[call-overload]
        elif path == "raw_entries":
            del request.raw_input_contents[1:]
        elif path == "timeout":
            request.parameters["timeout"].string_param = str(value)
        elif path == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)  # type: ignore[call-overload]
            request.raw_input_contents[0] = np.ones(value, np.float32).tobytes()  # type: ignore[call-overload]
        elif path == "no_inputs":
            del request.inputs[:]
            del request.raw_input_contents[:]
        else:
            setattr(request.inputs[0], path, value)
    return request


INVALID = {
    "other datatype": ({"datatype": "INT32"}, "input 'a' must be FP32"),
    "unknown datatype": ({"datatype": "FLOAT"}, "unknown datatype 'FLOAT'"),
    "wrong shape": ({"shape": [2, 5]}, "the model expects [-1, 4]"),
    "missing input": ({"drop_input": True}, "input 'b' is missing"),
    "unknown input": ({"extra_input": "c"}, "'c'"),
    "unknown output": ({"output": "difference"}, "'difference'"),
    "short raw data": ({"raw": b"\0" * 31}, "binary data is 31 bytes"),
    "raw data for one input of two": ({"raw_entries": True}, "raw_input_contents has 1"),
    "no inputs": ({"no_inputs": True}, "inputs must be a non-empty list"),
    "malformed timeout": ({"timeout": "soon"}, "parameters.timeout"),
    "malformed version": ({"version": "latest"}, "version"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_requests_are_invalid_argument(
    client: grpcclient.InferenceServerClient,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    case: str,
) -> None:
    changes, expected = INVALID[case]
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(message(**changes), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert expected in str(refused.value.details())
    still_serving(client)


def test_a_model_that_failed_to_load_is_unavailable(
    client: grpcclient.InferenceServerClient,
) -> None:
    assert not client.is_model_ready("broken")
    for call in (
        lambda: client.infer("broken", [infer_input("start", np.array(0.0, np.float32))]),
        lambda: client.get_model_metadata("broken"),
    ):
        code, message = status(call)
        assert code == "UNAVAILABLE", message
        assert "model 'broken' is unavailable" in message
    still_serving(client)


def test_messages_over_the_size_limit_are_resource_exhausted(
    client: grpcclient.InferenceServerClient,
) -> None:
    # Just under the limit is served.
    under = np.ones((1, MAX_REQUEST_BYTES // 4 // 2 - 1024), np.float32)
    big_model = [infer_input("a", under[:, :4]), infer_input("b", under[:, :4])]
    assert client.infer("add_mul", big_model).as_numpy("sum") is not None
    over = np.zeros((64, MAX_REQUEST_BYTES // 4 // 64), np.float32)
    code, message = status(lambda: client.infer("add_mul", [infer_input("a", over)]))
    assert code == "RESOURCE_EXHAUSTED", message
    # Compressed it is small; the limit holds for what it inflates to.
    code, message = status(
        lambda: client.infer("add_mul", [infer_input("a", over)], compression_algorithm="gzip")
    )
    assert code == "RESOURCE_EXHAUSTED", message
    still_serving(client)


def test_management_needs_the_management_key(client: grpcclient.InferenceServerClient) -> None:
    calls: dict[str, Callable[[dict[str, str] | None], object]] = {
        "index": lambda headers: client.get_model_repository_index(headers=headers),
        "load": lambda headers: client.load_model("nope", headers=headers),
        "unload": lambda headers: client.unload_model("nope", headers=headers),
    }
    for what, call in calls.items():
        code, message = status(lambda: call(None))  # noqa: B023 - called at once
        assert code == "UNAUTHENTICATED", (what, message)
        assert "needs an API key" in message
        for wrong in ({"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            code, message = status(lambda: call(wrong))  # noqa: B023 - called at once
            assert code == "PERMISSION_DENIED", (what, wrong, message)
            assert "not valid" in message
    right = {"authorization": f"Bearer {MANAGEMENT_KEY}"}
    index = client.get_model_repository_index(headers=right)
    assert {(m.name, m.state) for m in index.models} == {
        ("add_mul", "READY"),
        ("broken", "UNAVAILABLE"),
    }
    code, message = status(lambda: client.load_model("nope", headers=right))
    assert code == "NOT_FOUND", message


def test_shared_memory_trace_and_log_settings_are_unimplemented(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    calls: dict[str, Callable[[], object]] = {
        "system shm status": client.get_system_shared_memory_status,
        "system shm register": lambda: client.register_system_shared_memory("r", "/k", 64),
        "system shm unregister": client.unregister_system_shared_memory,
        "cuda shm status": client.get_cuda_shared_memory_status,
        "cuda shm register": lambda: client.register_cuda_shared_memory("r", b"aGFuZGxl", 0, 64),
        "cuda shm unregister": client.unregister_cuda_shared_memory,
        "trace settings": client.get_trace_settings,
        "trace update": lambda: client.update_trace_settings(settings={"trace_rate": "1"}),
        "log settings": client.get_log_settings,
        "log update": lambda: client.update_log_settings({"log_verbose_level": 1}),
    }
    for what, call in calls.items():
        code, message = status(call)
        assert code == "UNIMPLEMENTED", (what, message)
        assert "not supported by this server" in message, (what, message)
    # A client's call is no server fault: nothing is logged as an error.
    log = server.log()
    assert "Traceback" not in log and "NotImplementedError" not in log
    still_serving(client)
