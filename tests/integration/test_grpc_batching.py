"""The dynamic batcher behind gRPC calls and streams: queued calls share a run, a full queue
is UNAVAILABLE with a retry-after, a queue timeout is DEADLINE_EXCEEDED.

A slow call (the probe model loops as often as its ``spin`` input says) occupies the model's
only instance; the others queue behind it, which the tests see in the queue-depth gauge.
Nothing depends on timing except that the slow run outlasts a few local round trips.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.grpc.probes import expected_y, model_metric, probe_inputs, status
from tests.http_probes import wait_for
from tests.onnx_models import probe, write_model
from tests.server import RunningServer

# Loop trips of the probe model for a run of about a second (a few us each).
SLOW_SPIN = 250_000
QUEUE_SIZE = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    config = {"dynamic_batching": {"max_queue_size": QUEUE_SIZE}, "instances": {"count": 1}}
    write_model(root, "batched", probe(), config=config)
    with RunningServer(root, log_path=root.parent / "server.log") as running:
        yield running


def count(server: RunningServer, name: str, **labels: str) -> float:
    return model_metric(server, name, "batched", **labels)


def full_queue_call(server: RunningServer) -> grpc.RpcError:
    """One more call with the raw stub, to read the trailing metadata of its refusal."""
    request = service_pb2.ModelInferRequest(model_name="batched")
    for name, datatype, array in (
        ("x", "FP32", np.ones((1, 4), np.float32)),
        ("idx", "INT64", np.zeros((1, 1), np.int64)),
        ("spin", "INT64", np.zeros((1, 1), np.int64)),
    ):
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=30)
    return refused.value


def test_queued_calls_and_streams_share_runs_within_the_queues_bounds(
    server: RunningServer,
) -> None:
    runs = count(server, "onnx_serve_batch_size_count")
    rows = count(server, "onnx_serve_batch_size_sum")
    full = count(server, "onnx_serve_request_failure_total", protocol="grpc", reason="queue_full")
    answers: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
    xs = {f"q{i}": np.full((1, 4), i + 1, np.float32) for i in range(QUEUE_SIZE)}
    with (
        grpcclient.InferenceServerClient(server.grpc_address) as client,
        grpcclient.InferenceServerClient(server.grpc_address) as streaming,
    ):
        client.async_infer(
            "batched",
            probe_inputs(np.zeros((1, 4)), spin=SLOW_SPIN),
            callback=lambda result, error: answers.put(("slow", result, error)),
        )
        wait_for(lambda: count(server, "onnx_serve_inflight_requests") == 1, "the slow call")

        # A queue timeout while the instance is busy.
        code, message = status(
            lambda: client.infer("batched", probe_inputs(np.ones((1, 4))), timeout=1000)
        )
        assert code == "DEADLINE_EXCEEDED", message
        assert "past its timeout of 1 ms" in message

        # Fill the queue: two unary calls and a request on a stream.
        streaming.start_stream(callback=lambda result, error: answers.put(("q2", result, error)))
        for request_id, x in xs.items():
            if request_id == "q2":
                streaming.async_stream_infer("batched", probe_inputs(x), request_id=request_id)
            else:
                client.async_infer(
                    "batched",
                    probe_inputs(x),
                    request_id=request_id,
                    callback=lambda result, error, i=request_id: answers.put((i, result, error)),
                )
        wait_for(lambda: count(server, "onnx_serve_queue_depth") == QUEUE_SIZE, "a full queue")

        refused = full_queue_call(server)
        assert answers.empty(), "the slow run ended too early: raise SLOW_SPIN"
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()
        assert f"has {QUEUE_SIZE} requests queued" in str(refused.details())
        trailing = dict(refused.trailing_metadata() or ())
        assert int(trailing["retry-after"]) >= 1
        assert (
            count(server, "onnx_serve_request_failure_total", protocol="grpc", reason="queue_full")
            == full + 1
        )

        results = {}
        for _ in range(QUEUE_SIZE + 1):
            name, result, error = answers.get(timeout=120)
            assert error is None, (name, error)
            results[name] = result
        streaming.stop_stream()
    for request_id, x in xs.items():
        assert results[request_id].get_response().id == request_id
        np.testing.assert_allclose(results[request_id].as_numpy("y"), expected_y(x))
    # The slow run, then one run of the three queued requests together.
    assert count(server, "onnx_serve_batch_size_count") == runs + 2
    assert count(server, "onnx_serve_batch_size_sum") == rows + 1 + QUEUE_SIZE
    assert count(server, "onnx_serve_queue_depth") == 0
