"""The gRPC server's life in a real process: SIGTERM drains gRPC calls (health turns
NOT_SERVING, new calls are UNAVAILABLE, those in flight finish, exit 0), and several worker
processes share the gRPC port and count its calls in one /metrics."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import StartServer
from tests.grpc.probes import BusyCall, expected_y, infer_input, probe_inputs, status
from tests.http_probes import metric, wait_for
from tests.onnx_models import add_mul, probe, write_model
from tests.server import RunningServer, free_port, serve_until_exit, taken_port

X = np.arange(8, dtype=np.float32).reshape(2, 4)
INFO = {"ONNX_SERVE_LOG_LEVEL": "info"}


def health(server: RunningServer) -> Any:
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


class OpenStream:
    """A ModelStreamInfer call that stays open; ``ask`` sends one request, reads one answer."""

    def __init__(self, server: RunningServer) -> None:
        self.requests: queue.SimpleQueue[service_pb2.ModelInferRequest | None] = queue.SimpleQueue()
        self.channel = grpc.insecure_channel(server.grpc_address)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.answers = stub.ModelStreamInfer(iter(self.requests.get, None), timeout=120)

    def ask(self, request_id: str) -> service_pb2.ModelStreamInferResponse:
        request = service_pb2.ModelInferRequest(model_name="add_mul", id=request_id)
        for name in ("a", "b"):
            request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        self.requests.put(request)
        answer: service_pb2.ModelStreamInferResponse = next(self.answers)
        return answer

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def full_log(server: RunningServer) -> str:
    return server.log_path.read_text(errors="replace")


def exit_code(server: RunningServer, timeout: float = 60.0) -> int:
    assert server.process is not None
    try:
        return server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server still running after SIGTERM:\n{server.log()}") from None


def test_sigterm_drains_grpc_calls_then_exits_0(start_server: StartServer, tmp_path: Path) -> None:
    root = tmp_path / "models"
    write_model(root, "probe", probe(), config={"instances": {"count": 1}})
    write_model(root, "add_mul", add_mul())
    server = start_server(root, env=INFO)
    assert health(server) == health_pb2.HealthCheckResponse.SERVING
    answers: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
    stream = OpenStream(server)
    assert stream.ask("before").error_message == ""
    with (
        BusyCall(server, "probe") as busy,
        grpcclient.InferenceServerClient(server.grpc_address) as client,
    ):
        # A call certainly in flight: it waits for the session the busy call holds.
        client.async_infer(
            "probe",
            probe_inputs(X),
            request_id="held",
            callback=lambda result, error: answers.put((result, error)),
        )
        wait_for(
            lambda: metric(server.url, "onnx_serve_requests_in_flight") == 2,
            "both calls to be in flight",
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)

        wait_for(
            lambda: health(server) == health_pb2.HealthCheckResponse.NOT_SERVING,
            "gRPC health to say NOT_SERVING",
        )
        assert client.is_server_live()
        assert not client.is_server_ready()
        code, message = status(lambda: client.infer("probe", probe_inputs(X)))
        assert code == "UNAVAILABLE", message
        assert "shutting down" in message
        # A stream opened before keeps answering, each new request with the refusal.
        refused = stream.ask("after")
        assert "shutting down" in refused.error_message
        assert refused.infer_response.id == "after"
        stream.close()
        assert answers.empty() and server.process.poll() is None

        # The busy call's client leaves; the held call gets the session and finishes.
        busy.cancel(wait=False)
        result, error = answers.get(timeout=60)
        assert error is None, error
        assert result.get_response().id == "held"
        np.testing.assert_allclose(result.as_numpy("y"), expected_y(X))

    assert exit_code(server) == 0
    log = full_log(server)
    assert "SIGTERM: draining 2 in-flight requests" in log
    assert "shut down: closed the sessions of 2 model versions" in log


def test_workers_share_the_grpc_port_and_their_metrics(
    start_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    write_model(root, "add_mul", add_mul())
    server = start_server(root, args=["--workers", "2"], env=INFO)
    wait_for(lambda: full_log(server).count("gRPC listening on") == 2, "both workers to serve gRPC")
    calls = 24
    ones = np.ones((1, 4), np.float32)
    for i in range(calls):
        # A new connection each time: the kernel spreads connections over the workers.
        with grpcclient.InferenceServerClient(
            server.grpc_address, channel_args=[("grpc.use_local_subchannel_pool", 1)]
        ) as client:
            result = client.infer(
                "add_mul", [infer_input("a", ones), infer_input("b", ones)], request_id=str(i)
            )
            assert result.get_response().id == str(i)
    wait_for(
        lambda: (
            metric(
                server.url,
                "onnx_serve_request_success_total",
                model="add_mul",
                version="1",
                protocol="grpc",
            )
            == calls
        ),
        "every worker's gRPC calls to be counted",
    )
    # Each process numbers its request ids after a prefix of its own: both answered calls.
    access = re.compile(r"\[([0-9a-f]{16})[0-9a-f]{16}\] \S+ \"GRPC \S+/ModelInfer\" OK")
    logged = access.findall(full_log(server))
    assert len(logged) == calls
    assert len(set(logged)) == 2
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    assert exit_code(server) == 0, server.log()


def test_a_grpc_port_in_use_stops_the_server(tmp_path: Path) -> None:
    """As with the HTTP port: exit status 3 at once, saying which address is taken."""
    write_model(tmp_path / "models", "add_mul", add_mul())
    with taken_port() as port:
        done = serve_until_exit(
            tmp_path / "models", "--port", str(free_port()), "--grpc-port", str(port)
        )
    assert done.returncode == 3, done.stderr[-3000:]
    assert f"gRPC cannot listen on 127.0.0.1:{port}" in done.stderr
