"""Dynamic batching in a real server: merging, failures, queue limits, timeouts, disconnects.

Each scenario first occupies the model's only instance with a slow request (the probe
model loops as often as its ``spin`` input says), then queues requests behind it and waits,
by polling the queue-depth gauge, until they are queued. Nothing depends on timing except
that the slow run outlasts a few local round trips.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, SAMPLE_MODELS
from tests.onnx_models import probe, write_model
from tests.server import RunningServer

T = TypeVar("T")
# Loop iterations of the probe model for a run of about a second (a few us each).
SLOW_SPIN = 250_000
QUEUED = "onnx_serve_queue_depth"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "probe", probe(), config={"dynamic_batching": {}})
    write_model(root, "small_queue", probe(), config={"dynamic_batching": {"max_queue_size": 2}})
    write_model(root, "plain", probe())
    # The bundled digits model (image input), batched: image requests take the queue too.
    digits = json.loads((SAMPLE_MODELS / "digits" / "config.json").read_text())
    write_model(
        root,
        "digits",
        (SAMPLE_MODELS / "digits" / "1" / "model.onnx").read_bytes(),
        config={**digits, "dynamic_batching": {}},
        labels=(SAMPLE_MODELS / "digits" / "labels.txt").read_text().split(),
    )
    with RunningServer(root, log_path=root.parent / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=16) as executor:
        yield executor


def samples(server: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(server: RunningServer, name: str, model: str, **labels: str) -> float:
    key = frozenset({"model": model, "version": "1", **labels}.items())
    return samples(server).get((name, key), 0.0)


def wait_for(probe_: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll until truthy; the timeout only turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe_()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {value!r})")
        time.sleep(0.02)


def body(
    x: np.ndarray, idx: int = 0, spin: int = 0, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    rows = x.shape[0]

    def tensor(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
        return {
            "name": name,
            "datatype": datatype,
            "shape": list(array.shape),
            "data": array.ravel().tolist(),
        }

    doc: dict[str, Any] = {
        "inputs": [
            tensor("x", "FP32", x),
            tensor("idx", "INT64", np.full((rows, 1), idx)),
            tensor("spin", "INT64", np.full((rows, 1), spin)),
        ]
    }
    if parameters is not None:
        doc["parameters"] = parameters
    return doc


def infer(server: RunningServer, model: str, doc: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=doc, timeout=60)


def outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def expected_y(x: np.ndarray) -> np.ndarray:
    return np.asarray(2 * x + x.sum(axis=1, keepdims=True), dtype=np.float32)


def occupy(server: RunningServer, pool: ThreadPoolExecutor, model: str) -> Future[httpx.Response]:
    """Start a slow request on ``model`` and return once it runs (so others must queue)."""
    before = metric(server, "onnx_serve_request_success_total", model, protocol="rest")
    slow = pool.submit(infer, server, model, body(np.zeros((1, 4)), spin=SLOW_SPIN))
    wait_for(
        lambda: metric(server, "onnx_serve_inflight_requests", model) >= 1 or slow.done(),
        "the slow request to arrive",
    )
    # A marker that queues proves the instance is busy with the slow run.
    pool.submit(infer, server, model, body(np.ones((1, 4))))
    wait_for(lambda: metric(server, QUEUED, model) >= 1, "the marker to queue")
    assert not slow.done() and before == metric(
        server, "onnx_serve_request_success_total", model, protocol="rest"
    )
    return slow  # the marker is answered with the next batch


def test_queued_requests_merge_by_shape_and_rows_map_back(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    count = "onnx_serve_batch_size_count"
    runs_before = metric(server, count, "probe")
    rows_before = metric(server, "onnx_serve_batch_size_sum", "probe")
    slow = occupy(server, pool, "probe")
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((rows, w)).astype(np.float32) for rows, w in
          [(1, 4), (2, 6), (3, 4), (1, 6), (2, 4)]]  # fmt: skip
    futures = [pool.submit(infer, server, "probe", body(x, idx=i)) for i, x in enumerate(xs)]
    wait_for(lambda: metric(server, QUEUED, "probe") == 1 + len(xs), "requests to queue")
    for i, (x, future) in enumerate(zip(xs, futures, strict=True)):
        out = outputs(future.result())
        np.testing.assert_allclose(out["y"], expected_y(x), rtol=1e-5, atol=1e-5)
        assert (out["g"][:, 0, 0] == 3 * i).all()
    assert slow.result().status_code == 200
    # The slow run, then one batch of width 4 (marker + 6 rows) and one of width 6 (3 rows).
    assert metric(server, count, "probe") - runs_before == 3
    assert metric(server, "onnx_serve_batch_size_sum", "probe") - rows_before == 1 + 7 + 3
    over_four = metric(server, "onnx_serve_batch_size_bucket", "probe", le="8.0") - metric(
        server, "onnx_serve_batch_size_bucket", "probe", le="4.0"
    )
    assert over_four >= 1


def test_poisoned_and_invalid_requests_fail_alone(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    slow = occupy(server, pool, "probe")
    xs = [np.full((1, 4), i, np.float32) for i in range(4)]
    indices = [1, 42, 3, 0]  # the table has 5 rows
    futures = [
        pool.submit(infer, server, "probe", body(x, idx=i))
        for x, i in zip(xs, indices, strict=True)
    ]
    wait_for(lambda: metric(server, QUEUED, "probe") == 5, "requests to queue")
    # Validation happens before the queue: a wrong shape is refused at once.
    refused = infer(server, "probe", body(np.ones((1, 4, 1))))
    assert refused.status_code == 400, refused.text
    assert metric(server, QUEUED, "probe") == 5
    for x, i, future in zip(xs, indices, futures, strict=True):
        response = future.result()
        if i == 42:
            assert response.status_code == 400, response.text
            assert "out of data bounds" in response.json()["error"]
        else:
            out = outputs(response)
            np.testing.assert_allclose(out["y"], expected_y(x))
            assert out["g"][0, 0, 0] == 3 * i
    assert slow.result().status_code == 200


def test_queue_full_answers_503_with_retry_after(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    slow = occupy(server, pool, "small_queue")
    second = pool.submit(infer, server, "small_queue", body(np.ones((1, 4))))
    wait_for(lambda: metric(server, QUEUED, "small_queue") == 2, "the queue to fill")
    full = infer(server, "small_queue", body(np.ones((1, 4))))
    assert full.status_code == 503, full.text
    assert int(full.headers["retry-after"]) >= 1
    assert "queued" in full.json()["error"]
    assert metric(
        server,
        "onnx_serve_request_failure_total",
        "small_queue",
        protocol="rest",
        reason="queue_full",
    )
    assert second.result().status_code == 200
    assert slow.result().status_code == 200


def test_queue_timeout_answers_504(server: RunningServer, pool: ThreadPoolExecutor) -> None:
    slow = occupy(server, pool, "probe")
    late = infer(server, "probe", body(np.ones((1, 4)), parameters={"timeout": 50_000}))
    assert late.status_code == 504, late.text
    assert "past its timeout of 50 ms" in late.json()["error"]
    assert not slow.done()
    bad = infer(server, "probe", body(np.ones((1, 4)), parameters={"timeout": "soon"}))
    assert bad.status_code == 400, bad.text
    assert slow.result().status_code == 200


def raw_request(server: RunningServer, doc: dict[str, Any]) -> socket.socket:
    """Send a whole request on a raw socket and leave it waiting for the answer."""
    payload = orjson.dumps(doc)
    head = (
        f"POST /v2/models/probe/infer HTTP/1.1\r\nHost: {server.host_port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head + payload)
    return sock


def test_client_that_disconnects_leaves_the_queue(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    gone = {"protocol": "rest", "reason": "client_disconnected"}
    failures_before = metric(server, "onnx_serve_request_failure_total", "probe", **gone)
    runs_before = metric(server, "onnx_serve_batch_size_count", "probe")
    slow = occupy(server, pool, "probe")
    sock = raw_request(server, body(np.ones((2, 4))))
    wait_for(lambda: metric(server, QUEUED, "probe") == 2, "the request to queue")
    sock.close()
    wait_for(lambda: metric(server, QUEUED, "probe") == 1, "the queue to drop it")
    assert not slow.done()
    assert slow.result().status_code == 200
    wait_for(lambda: metric(server, QUEUED, "probe") == 0, "the marker to run")
    # The slow run and the marker's; the dropped request never ran.
    wait_for(
        lambda: metric(server, "onnx_serve_batch_size_count", "probe") - runs_before == 2,
        "the marker's run to be counted",
    )
    assert metric(server, "onnx_serve_batch_size_sum", "probe") > 0
    after = metric(server, "onnx_serve_request_failure_total", "probe", **gone)
    assert after - failures_before == 1


def test_model_without_batching_runs_straight(
    server: RunningServer, pool: ThreadPoolExecutor
) -> None:
    x = np.ones((2, 4), np.float32)
    out = outputs(infer(server, "plain", body(x)))
    np.testing.assert_allclose(out["y"], expected_y(x))
    assert metric(server, QUEUED, "plain") == 0


def test_image_requests_go_through_the_queue(server: RunningServer) -> None:
    runs_before = metric(server, "onnx_serve_batch_size_count", "digits")
    seven = (ROOT / "docs" / "seven.png").read_bytes()
    r = httpx.post(
        server.url + "/predict",
        files={"file": ("seven.png", seven, "image/png")},
        data={"model": "digits"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0][0]["label"] == "7"
    assert metric(server, "onnx_serve_batch_size_count", "digits") == runs_before + 1
    # The batcher reported the run; the queue is empty again.
    assert metric(server, "onnx_serve_queue_duration_seconds_count", "digits") >= 1
    assert metric(server, QUEUED, "digits") == 0
