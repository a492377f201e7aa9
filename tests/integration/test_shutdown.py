"""Graceful shutdown of a real process: drain on SIGTERM, 503 to new work, exit 0."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np

from tests.http_probes import HeldRequest, metric, wait_for
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

ROWS = np.arange(32, dtype=np.float32).reshape(2, 16) / 32


def repository(root: Path) -> Path:
    write_model(root, "mlp", mlp())
    return root


def infer_body() -> bytes:
    tensor = {"name": "x", "shape": [2, 16], "datatype": "FP32", "data": ROWS.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def exit_code(server: RunningServer, timeout: float = 30.0) -> int:
    assert server.process is not None
    try:
        return server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"server still running after SIGTERM:\n{server.log()}") from None


def not_ready(server: RunningServer) -> bool:
    return httpx.get(server.url + "/v2/health/ready").status_code == 503


def test_sigterm_drains_in_flight_requests_then_exits_0(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(repository(tmp_path / "models"), env={"ONNX_SERVE_LOG_LEVEL": "info"})
    expected = httpx.post(server.url + "/v2/models/mlp/infer", content=infer_body()).json()
    predict_body = json.dumps({"model": "mlp", "inputs": ROWS.tolist()}).encode()
    with (
        HeldRequest(server.host_port, "/v2/models/mlp/infer", infer_body()) as infer,
        HeldRequest(
            server.host_port, "/predict", predict_body, {"X-Request-ID": "held"}
        ) as predict,
    ):
        # Both count as in flight once their headers are in.
        wait_for(
            lambda: metric(server.url, "onnx_serve_requests_in_flight") == 2,
            "the held requests to be in flight",
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: not_ready(server), "readiness to turn false")
        ready = httpx.get(server.url + "/v2/health/ready")
        assert ready.status_code == 503 and "error" in ready.json()
        assert httpx.get(server.url + "/v2/health/live").status_code == 200
        for path, body in (("/v2/models/mlp/infer", infer_body()), ("/predict", predict_body)):
            late = httpx.post(server.url + path, content=body, headers={"X-Request-ID": "late"})
            assert late.status_code == 503, late.text
            assert "shutting down" in late.json()["error"]
            assert late.headers["x-request-id"] == "late"
            assert late.headers["connection"] == "close"
        assert server.process.poll() is None, "exited with requests still in flight"

        status, headers, data = infer.finish()
        assert status == 200, data
        assert json.loads(data)["outputs"] == expected["outputs"]
        assert headers["connection"] == "close"
        status, headers, data = predict.finish()
        assert status == 200, data
        assert headers["x-request-id"] == "held"
        got = np.array(json.loads(data)["outputs"]["y"], dtype=np.float32)
        want = np.array(expected["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)
        np.testing.assert_allclose(got, want, rtol=1e-6)

    assert exit_code(server) == 0
    log = server.log()
    assert "SIGTERM: draining 2 in-flight requests" in log
    assert "shut down: closed the sessions of 1 model versions" in log


def test_grace_period_bounds_the_drain(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"ONNX_SERVE_LOG_LEVEL": "info", "ONNX_SERVE_SHUTDOWN_GRACE_SECONDS": "0.5"}
    log_path = tmp_path / "server.log"
    server = start_server(repository(tmp_path / "models"), env=env, log_path=log_path)
    with HeldRequest(server.host_port, "/v2/models/mlp/infer", infer_body()):
        wait_for(
            lambda: metric(server.url, "onnx_serve_requests_in_flight") == 1,
            "the held request to be in flight",
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # The client never sends the rest of its body: the grace period ends the wait.
        assert exit_code(server) == 0
    log = log_path.read_text()
    assert "grace period of 0.5s is over with 1 requests in flight" in log
    assert "shut down: closed the sessions of 1 model versions" in log


def test_idle_server_exits_0_on_sigterm_and_sigint(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = repository(tmp_path / "models")
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = start_server(root)
        assert server.process is not None
        server.process.send_signal(sig)
        assert exit_code(server) == 0, server.log()


def test_workers_drain_in_flight_requests_then_exit_0(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The supervisor passes SIGTERM on; each worker drains as a single process does."""
    server = start_server(
        repository(tmp_path / "models"),
        args=["--workers", "2"],
        env={"ONNX_SERVE_LOG_LEVEL": "info"},
    )
    r = httpx.post(server.url + "/v2/models/mlp/infer", content=infer_body())
    assert r.status_code == 200, r.text
    with HeldRequest(server.host_port, "/v2/models/mlp/infer", infer_body()) as held:
        # Each scrape goes to either worker; the one holding the request counts it.
        wait_for(
            lambda: metric(server.url, "onnx_serve_requests_in_flight") == 1,
            "the held request to be in flight",
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining 1 in-flight requests" in server.log(), "the drain to start")
        assert server.process.poll() is None, "exited with a request still in flight"
        status, headers, data = held.finish()
        assert status == 200, data
        assert json.loads(data)["outputs"] == r.json()["outputs"]
        assert headers["connection"] == "close"
    assert exit_code(server) == 0, server.log()
    assert "SIGTERM: passing it on to the workers" in server.log()
