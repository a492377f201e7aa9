"""After traffic, /metrics shows every series with sensible values."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.http_probes import metric_values, wait_for
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "mlp", mlp())
    with RunningServer(root) as running:
        yield running


def infer_body(rows: int, width: int = 16) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "shape": [rows, width], "datatype": "FP32",
                    "data": [0.5] * rows * width}]
    }  # fmt: skip


def infer(server: RunningServer, rows: int, width: int = 16) -> httpx.Response:
    return httpx.post(server.url + "/v2/models/mlp/infer", json=infer_body(rows, width))


def test_series_after_traffic(server: RunningServer) -> None:
    for rows in (1, 2, 3):
        assert infer(server, rows).status_code == 200
    assert infer(server, 1, width=5).status_code == 400
    assert httpx.post(server.url + "/v2/models/mlp/infer", content=b"{").status_code == 400
    assert httpx.post(server.url + "/v2/models/ghost/infer", content=b"{}").status_code == 404

    r = httpx.get(server.url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    s = metric_values(server.url)
    m = {"model": "mlp", "version": "1"}
    rest = {**m, "protocol": "rest"}
    assert value(s, "onnx_serve_request_success_total", **rest) == 3
    assert value(s, "onnx_serve_request_failure_total", reason="bad_request", **rest) == 2
    assert value(s, "onnx_serve_request_duration_seconds_count", **rest) == 5
    assert value(s, "onnx_serve_request_duration_seconds_sum", **rest) > 0
    assert value(s, "onnx_serve_queue_duration_seconds_count", **m) == 3
    assert value(s, "onnx_serve_compute_duration_seconds_count", **m) == 3
    assert value(s, "onnx_serve_inference_count_total", **m) == 6
    assert value(s, "onnx_serve_execution_count_total", **m) == 3
    assert value(s, "onnx_serve_batch_size_sum", **m) == 6
    assert value(s, "onnx_serve_batch_size_bucket", le="2.0", **m) == 2
    assert value(s, "onnx_serve_inflight_requests", **m) == 0
    assert value(s, "onnx_serve_model_load_duration_seconds", **m) > 0
    assert value(s, "onnx_serve_model_ready", provider="CPUExecutionProvider", **m) == 1
    assert ("process_resident_memory_bytes", frozenset()) in s
    # An unknown model name never creates a series.
    assert not any(dict(labels).get("model") == "ghost" for _, labels in s)


def test_two_workers_share_connections_and_add_up(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each worker counts on its own and moves its figures to the shared files every second:
    /metrics on any worker adds every worker's requests up, none lost or doubled."""
    root = tmp_path_factory.mktemp("models")
    shared = tmp_path_factory.mktemp("metrics")
    write_model(root, "mlp", mlp())
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    with RunningServer(root, env=env, args=["--workers", "2"]) as running:
        host, port = running.url.removeprefix("http://").rsplit(":", 1)
        body = json.dumps(infer_body(2)).encode()
        sent = 0

        def round_on_both() -> bool:
            """Open 8 connections together, send 3 requests on each; True once both workers
            have served (the kernel may give all of them to one worker; the second may still
            be starting when the first answers)."""
            nonlocal sent
            connections = [http.client.HTTPConnection(host, int(port)) for _ in range(8)]
            for connection in connections:
                connection.connect()
            for _ in range(3):
                for connection in connections:
                    connection.request("POST", "/v2/models/mlp/infer", body)
                for connection in connections:
                    response = connection.getresponse()
                    assert response.status == 200, response.read()
                    response.read()
                    sent += 1
            for connection in connections:
                connection.close()
            # A worker writes counter files once it has served a request: one file each.
            return len(list(shared.glob("counter_*.db"))) == 2

        wait_for(round_on_both, "requests served by both workers")
        m = {"model": "mlp", "version": "1"}
        rest = {**m, "protocol": "rest"}

        def counted() -> Samples | None:
            s = metric_values(running.url)
            done = s.get(("onnx_serve_request_success_total", frozenset(rest.items())))
            return s if done == sent else None

        s = wait_for(counted, f"{sent} successes counted")
        assert value(s, "onnx_serve_request_duration_seconds_count", **rest) == sent
        assert value(s, "onnx_serve_queue_duration_seconds_count", **m) == sent
        assert value(s, "onnx_serve_inference_count_total", **m) == 2 * sent
        assert value(s, "onnx_serve_execution_count_total", **m) == sent
        assert value(s, "onnx_serve_batch_size_bucket", le="2.0", **m) == sent
        assert value(s, "onnx_serve_inflight_requests", **m) == 0
