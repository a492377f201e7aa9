"""tritonclient.grpc (sync and asyncio) against a real server: health, metadata, config,
inference with raw and typed tensors, streams, compression, request ids, statistics and
metrics, standard health checking and reflection."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.grpc.probes import infer_input, model_metric, status
from tests.http_probes import wait_for
from tests.onnx_models import add_mul, write_model
from tests.server import RunningServer

SERVICE = "inference.GRPCInferenceService"
A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 0.5, np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "add_mul", add_mul())
    log = root.parent / "server.log"
    with RunningServer(root, env={"ONNX_SERVE_LOG_LEVEL": "info"}, log_path=log) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


def inputs(a: np.ndarray = A, b: np.ndarray = B) -> list[grpcclient.InferInput]:
    return [infer_input("a", a), infer_input("b", b)]


def test_server_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata.name == "onnx-serve"
    assert metadata.version
    assert {"binary_tensor_data", "model_repository", "statistics"} <= set(metadata.extensions)


def test_model_readiness_metadata_and_config(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready("add_mul")
    assert client.is_model_ready("add_mul", "1")
    assert not client.is_model_ready("add_mul", "2")
    assert not client.is_model_ready("no-such-model")
    for version in ("", "1"):
        metadata = client.get_model_metadata("add_mul", version, as_json=True)
        assert metadata["name"] == "add_mul"
        assert metadata["versions"] == ["1"]
        assert metadata["platform"] == "onnxruntime_onnx"
        assert metadata["inputs"] == [
            {"name": name, "datatype": "FP32", "shape": ["-1", "4"]} for name in ("a", "b")
        ]
        assert [o["name"] for o in metadata["outputs"]] == ["sum", "product"]
    config = client.get_model_config("add_mul", "1").config
    assert (config.name, config.backend, config.max_batch_size) == ("add_mul", "onnxruntime", 64)
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("a", grpcclient.model_config_pb2.TYPE_FP32, [4]),
        ("b", grpcclient.model_config_pb2.TYPE_FP32, [4]),
    ]
    assert [t.name for t in config.output] == ["sum", "product"]


def test_raw_tensors_with_every_output_or_a_subset(
    client: grpcclient.InferenceServerClient,
) -> None:
    every = client.infer("add_mul", inputs())
    assert [o.name for o in every.get_response().outputs] == ["sum", "product"]
    np.testing.assert_array_equal(every.as_numpy("sum"), A + B)
    np.testing.assert_array_equal(every.as_numpy("product"), A * B)
    one = client.infer(
        "add_mul", inputs(), model_version="1", outputs=[grpcclient.InferRequestedOutput("product")]
    )
    assert one.get_response().model_version == "1"
    assert one.as_numpy("sum") is None
    np.testing.assert_array_equal(one.as_numpy("product"), A * B)
    wanted = [grpcclient.InferRequestedOutput("product"), grpcclient.InferRequestedOutput("sum")]
    both = client.infer("add_mul", inputs(), outputs=wanted)
    assert [o.name for o in both.get_response().outputs] == ["product", "sum"]


def test_typed_contents_are_accepted(channel: grpc.Channel) -> None:
    # tritonclient always sends raw tensors: other clients fill the typed contents.
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="add_mul", id="typed-1")
    for name, array in (("a", A), ("b", B)):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=array.shape)
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    request.outputs.add(name="sum")
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed-1"
    result = grpcclient.InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("sum"), A + B)


def test_request_ids_are_echoed_and_logged(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    result = client.infer(
        "add_mul", inputs(), request_id="body-id-1", headers={"x-request-id": "trace-7f3a"}
    )
    assert result.get_response().id == "body-id-1"
    line = wait_for(
        lambda: next(
            (line for line in server.log_path.read_text().splitlines() if "[trace-7f3a]" in line),
            None,
        ),
        "the call's access log line",
    )
    assert '"GRPC /inference.GRPCInferenceService/ModelInfer" OK' in line
    assert "onnx_serve.access" in line


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_calls(client: grpcclient.InferenceServerClient, algorithm: str) -> None:
    big = np.tile(A, (32, 1))  # compressible: a repeated pattern
    result = client.infer("add_mul", inputs(big, big), compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("product"), big * big)
    assert client.is_model_ready("add_mul")


def test_statistics_and_metrics_count_grpc_requests(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    def stats() -> Any:
        return client.get_inference_statistics("add_mul", "1").model_stats[0]

    def requests(name: str, protocol: str, **labels: str) -> float:
        return model_metric(server, name, "add_mul", protocol=protocol, **labels)

    before = stats()
    successes = requests("onnx_serve_request_success_total", "grpc")
    bad = requests("onnx_serve_request_failure_total", "grpc", reason="bad_request")
    rest = requests("onnx_serve_request_success_total", "rest")
    for _ in range(3):
        client.infer("add_mul", inputs())
    wrong = [infer_input("a", A), infer_input("b", np.ones((2, 5), np.float32))]
    code, message = status(lambda: client.infer("add_mul", wrong))
    assert code == "INVALID_ARGUMENT", message
    after = stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_stats.fail.count == before.inference_stats.fail.count + 1
    assert after.inference_stats.compute_infer.count == after.inference_stats.success.count
    assert after.inference_count == before.inference_count + 6  # two rows each
    assert after.execution_count == before.execution_count + 3
    assert after.last_inference >= before.last_inference and after.last_inference > 0
    assert requests("onnx_serve_request_success_total", "grpc") == successes + 3
    assert requests("onnx_serve_request_failure_total", "grpc", reason="bad_request") == bad + 1
    assert requests("onnx_serve_request_success_total", "rest") == rest
    every = client.get_inference_statistics().model_stats
    assert [(s.name, s.version) for s in every] == [("add_mul", "1")]


def test_stream_of_independent_requests(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        sent = {f"s{i}": np.full((1, 4), i, np.float32) for i in range(6)}
        for request_id, a in sent.items():
            client.async_stream_infer("add_mul", inputs(a, B[:1]), request_id=request_id)
            if request_id == "s2":
                # Errors in the middle of the stream: a missing input, an unknown model.
                client.async_stream_infer("add_mul", [infer_input("a", a)], request_id="bad")
                client.async_stream_infer("nope", inputs(a, B[:1]), request_id="unknown")
        results, errors = {}, []
        for _ in range(len(sent) + 2):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(error.message())
            else:
                results[result.get_response().id] = result
    finally:
        client.stop_stream()
    assert sorted(errors) == [
        "Request for unknown model: 'nope' is not found",
        "input 'b' is missing",
    ]
    assert results.keys() == sent.keys()
    for request_id, a in sent.items():
        np.testing.assert_array_equal(results[request_id].as_numpy("sum"), a + B[:1])


def test_stream_errors_carry_their_request(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    def message(request_id: str, model: str, datatype: str) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
        for name in ("a", "b"):
            request.inputs.add(name=name, datatype=datatype, shape=[1, 4])
            request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        return request

    requests = [
        message("ok-1", "add_mul", "FP32"),
        message("wrong-type", "add_mul", "INT32"),
        message("unknown", "nope", "FP32"),
        message("ok-2", "add_mul", "FP32"),
    ]
    answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    by_id = {a.infer_response.id: a for a in answers}
    assert by_id.keys() == {"ok-1", "wrong-type", "unknown", "ok-2"}
    assert by_id["ok-1"].error_message == by_id["ok-2"].error_message == ""
    assert "must be FP32" in by_id["wrong-type"].error_message
    assert by_id["wrong-type"].infer_response.model_name == "add_mul"
    assert "Request for unknown model" in by_id["unknown"].error_message
    result = grpcclient.InferResult(by_id["ok-2"].infer_response)
    np.testing.assert_array_equal(result.as_numpy("product"), np.ones((1, 4), np.float32))


def test_asyncio_client_infer_and_stream(server: RunningServer) -> None:
    async def calls() -> tuple[Any, list[tuple[Any, Any]]]:
        async with aioclient.InferenceServerClient(server.grpc_address) as client:
            assert await client.is_server_ready()
            single = await client.infer("add_mul", inputs(), request_id="aio-1")

            async def requests() -> AsyncIterator[dict[str, Any]]:
                for i in range(4):
                    yield {
                        "model_name": "add_mul",
                        "inputs": inputs(A + i, B),
                        "request_id": f"aio-s{i}",
                    }
                yield {"model_name": "add_mul", "inputs": inputs(A)[:1], "request_id": "bad"}

            answers = [answer async for answer in client.stream_infer(requests())]
            return single, answers

    single, answers = asyncio.run(calls())
    assert single.get_response().id == "aio-1"
    np.testing.assert_array_equal(single.as_numpy("sum"), A + B)
    results = {r.get_response().id: r for r, e in answers if e is None}
    errors = [e.message() for r, e in answers if e is not None]
    assert errors == ["input 'b' is missing"]
    assert results.keys() == {f"aio-s{i}" for i in range(4)}
    for i in range(4):
        np.testing.assert_array_equal(results[f"aio-s{i}"].as_numpy("sum"), A + i + B)


def test_standard_health_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as refused:
        health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert {SERVICE, "grpc.health.v1.Health"} <= set(database.get_services())
    # A client with no generated code learns the messages from the server itself.
    service = DescriptorPool(database).FindServiceByName(SERVICE)
    infer = service.FindMethodByName("ModelInfer")
    assert infer.input_type.full_name == "inference.ModelInferRequest"
    assert "raw_input_contents" in infer.input_type.fields_by_name
    stream = service.FindMethodByName("ModelStreamInfer")
    assert stream.output_type.full_name == "inference.ModelStreamInferResponse"


def test_unknown_model_raises_in_the_client(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="Request for unknown model") as raised:
        client.infer("nope", inputs())
    assert raised.value.status() == "StatusCode.NOT_FOUND"
