"""A memory budget against a real server: eviction under churn, pinned and busy versions kept,
503 when nothing can be evicted, single-flight cold starts, timeouts while loading.

The models carry unused weights of a known size (onnxruntime drops them at load, but a
version is never counted for less than its files), so what each one is counted for is about
its file's size whatever the allocator does, and which loads fit is known in advance.
"""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.http_probes import metric, metric_values, wait_for
from tests.onnx_models import looping, write_model
from tests.server import RunningServer

MIB = 1 << 20
BUDGET = 10 * MIB
CHURN = [f"c{i}" for i in range(6)]
ON_DEMAND = {"load": "on_demand"}
X = np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64)


def body(trips: int | None = None) -> dict[str, object]:
    inputs: list[dict[str, object]] = [
        {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": X.ravel().tolist()}
    ]
    if trips is not None:
        inputs.insert(0, {"name": "n", "shape": [], "datatype": "INT64", "data": [trips]})
    return {"inputs": inputs}


def infer(
    server: RunningServer, model: str, doc: dict[str, object], **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/{model}/infer", json=doc, headers=headers, timeout=60
    )


def output(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(64, 64)


def expected(model_file: Path, trips: int | None = None) -> np.ndarray:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feeds: dict[str, np.ndarray] = {"x": X}
    if trips is not None:
        feeds["n"] = np.array(trips, dtype=np.int64)
    result: np.ndarray = session.run(None, feeds)[0]
    return result


def counter(server: RunningServer, name: str, model: str, **labels: str) -> float:
    return metric(server.url, f"onnx_serve_model_{name}_total", model=model, version="1", **labels)


def accounted(server: RunningServer) -> float:
    return metric(server.url, "onnx_serve_memory_accounted_bytes", device="host")


def index(server: RunningServer) -> dict[str, dict[str, object]]:
    r = httpx.post(server.url + "/v2/repository/index", json={}, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return {entry["name"]: entry for entry in r.json()}


MANAGEMENT_KEY = "memory-test-key"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}


def budget_server(root: Path, log: Path) -> RunningServer:
    env = {
        "ONNX_SERVE_MEMORY_BUDGET": str(BUDGET),
        "ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
    }
    return RunningServer(root, env=env, log_path=log)


# ---- churn: a pinned model and six that take turns -------------------------------------------


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Budget 10 MiB: ``pinned`` (3 MiB, loaded at start) and at most three of the six
    on-demand 2 MiB models."""
    root = tmp_path_factory.mktemp("churn")
    write_model(root, "pinned", looping(5, 3 * MIB, scale=0.9), config={"pinned": True})
    for i, name in enumerate(CHURN):
        write_model(root, name, looping(3, 2 * MIB, scale=0.3 + 0.1 * i), config=ON_DEMAND)
    with budget_server(root, root.parent / "churn.log") as server:
        yield server


def test_on_demand_models_wait_unloaded_and_count_as_ready(churn: RunningServer) -> None:
    entries = index(churn)
    assert entries["pinned"]["state"] == "READY"
    assert entries["pinned"]["memory"]["host_bytes"] >= 3 * MIB  # type: ignore[index]
    for name in CHURN:
        assert entries[name]["state"] == "AVAILABLE", entries[name]
        assert "memory" not in entries[name]
        ready = httpx.get(f"{churn.url}/v2/models/{name}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        assert counter(churn, "loads", name, reason="demand") == 0
    assert counter(churn, "loads", "pinned", reason="startup") == 1


def test_32_first_requests_share_one_load(churn: RunningServer) -> None:
    model = churn.models / "c0" / "1" / "model.onnx"
    with ThreadPoolExecutor(32) as threads:
        answers = list(threads.map(lambda _: infer(churn, "c0", body()), range(32)))
    want = expected(model, None)
    for answer in answers:
        np.testing.assert_allclose(output(answer), want, rtol=1e-5)
    assert sum(a.headers.get("x-cold-start") == "true" for a in answers) >= 1
    assert counter(churn, "loads", "c0", reason="demand") == 1
    # Once loaded, a request is served without a cold start.
    assert "x-cold-start" not in infer(churn, "c0", body()).headers


def test_churn_stays_within_the_budget_and_answers_right(churn: RunningServer) -> None:
    want = {name: expected(churn.models / name / "1" / "model.onnx") for name in CHURN}
    rng = random.Random(15)
    order = [rng.choice(CHURN) for _ in range(20)]
    for name in order:
        np.testing.assert_allclose(output(infer(churn, name, body())), want[name], rtol=1e-5)
        assert 0 < accounted(churn) <= BUDGET
    with ThreadPoolExecutor(3) as threads:
        answers = list(threads.map(lambda n: (n, infer(churn, n, body())), order))
    for name, answer in answers:
        np.testing.assert_allclose(output(answer), want[name], rtol=1e-5)
    assert 0 < accounted(churn) <= BUDGET
    values = metric_values(churn.url)

    def total(family: str, name: str) -> float:
        return sum(
            v for (n, labels), v in values.items()
            if n == f"onnx_serve_model_{family}_total" and ("model", name) in labels
        )  # fmt: skip

    entries = index(churn)
    for name in CHURN:
        # Every load is either still serving or was evicted.
        resident = 1 if entries[name]["state"] == "READY" else 0
        assert total("loads", name) - total("evictions", name) == resident, entries[name]
    assert sum(total("evictions", name) for name in CHURN) > 0
    # Never more counted than the budget holds, and the pinned model never left.
    counted = sum(e["memory"]["host_bytes"] for e in entries.values() if "memory" in e)  # type: ignore[index]
    assert counted <= BUDGET
    assert total("loads", "pinned") == 1 and total("evictions", "pinned") == 0
    assert entries["pinned"]["state"] == "READY"


def test_metadata_catalog_and_metrics_show_memory(churn: RunningServer) -> None:
    infer(churn, "c3", body())
    meta = httpx.get(f"{churn.url}/v2/models/c3", timeout=10).json()
    assert meta["memory"]["host_bytes"] >= 2 * MIB
    assert meta["residency"] == {"load": "on_demand", "pinned": False, "loaded_by": "demand"}
    pinned = httpx.get(f"{churn.url}/v2/models/pinned", timeout=10).json()
    assert pinned["residency"] == {"load": "startup", "pinned": True, "loaded_by": "startup"}
    catalog = httpx.get(f"{churn.url}/models", headers=AUTH, timeout=10).json()
    by_name = {m["name"]: m for m in catalog["models"]}
    assert by_name["c3"]["versions"][0]["memory"]["host_bytes"] >= 2 * MIB
    assert {m["state"] for m in by_name.values()} <= {"READY", "AVAILABLE"}
    gauge = metric(
        churn.url, "onnx_serve_model_memory_bytes", model="c3", version="1", device="host"
    )
    assert gauge == meta["memory"]["host_bytes"]
    assert metric(churn.url, "onnx_serve_memory_budget_bytes", device="host") == BUDGET


def test_cold_start_over_grpc_says_so_in_trailing_metadata(churn: RunningServer) -> None:
    # Six other loads evict c5 (least recently used) if it was loaded.
    for name in CHURN[:5]:
        output(infer(churn, name, body()))
    assert index(churn)["c5"]["state"] == "AVAILABLE"
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[64, 64]
    )
    request = service_pb2.ModelInferRequest(
        model_name="c5", inputs=[tensor], raw_input_contents=[X.tobytes()]
    )
    with grpc.insecure_channel(churn.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer, call = stub.ModelInfer.with_call(request, timeout=60)
        assert ("x-cold-start", "true") in tuple(call.trailing_metadata())
        again, call = stub.ModelInfer.with_call(request, timeout=60)
        assert ("x-cold-start", "true") not in tuple(call.trailing_metadata() or ())
    y = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(64, 64)
    np.testing.assert_allclose(y, expected(churn.models / "c5" / "1" / "model.onnx"), rtol=1e-5)


# ---- a busy model, a pinned one, and nothing left to evict --------------------------------------


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Budget 10 MiB: ``pinned`` 3 MiB, ``busy`` 4 MiB (one session, runs as long as asked),
    ``other`` 4 MiB; ``sluggish`` is small but each of its runs (its warm-up too) is slow."""
    root = tmp_path_factory.mktemp("crowded")
    write_model(root, "pinned", looping(5, 3 * MIB), config={"pinned": True})
    write_model(
        root, "busy", looping(None, 4 * MIB), config={**ON_DEMAND, "instances": {"count": 1}}
    )
    write_model(root, "other", looping(3, 4 * MIB, scale=0.7), config=ON_DEMAND)
    write_model(root, "sluggish", looping(10_000), config=ON_DEMAND)
    with budget_server(root, root.parent / "crowded.log") as server:
        yield server


def inflight(server: RunningServer, model: str) -> float:
    return metric(server.url, "onnx_serve_inflight_requests", model=model, version="1")


def send(server: RunningServer, model: str, doc: dict[str, object]) -> http.client.HTTPConnection:
    """Send a whole request without reading its answer (closing the connection hangs up)."""
    host, port = server.host_port.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request(
        "POST", f"/v2/models/{model}/infer", body=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    return connection


def test_a_busy_model_with_a_queue_is_never_evicted(crowded: RunningServer) -> None:
    model_file = crowded.models / "busy" / "1" / "model.onnx"
    with ThreadPoolExecutor(1) as threads:
        # The first request loads it and then runs until its client hangs up; the second
        # waits behind it for the only session.
        endless = send(crowded, "busy", body(100_000_000))
        wait_for(lambda: inflight(crowded, "busy") == 1, "the endless run")
        queued = threads.submit(infer, crowded, "busy", body(2))
        wait_for(lambda: inflight(crowded, "busy") == 2, "a request queued behind it")
        # 3 + 4 MiB are pinned or busy: 4 MiB more does not fit and nothing can be evicted.
        refused = infer(crowded, "other", body())
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        message = refused.json()["error"]
        assert "no room to load model 'other'" in message and "pinned, in use" in message
        assert refused.headers["x-cold-start"] == "true"
        assert counter(crowded, "evictions", "busy") == 0
        assert index(crowded)["busy"]["state"] == "READY"
        assert index(crowded)["other"]["state"] == "AVAILABLE"
        endless.close()
        np.testing.assert_allclose(output(queued.result()), expected(model_file, 2), rtol=1e-5)
    # Idle now, and the least recently used: it makes room for the other model.
    wait_for(lambda: inflight(crowded, "busy") == 0, "the busy model to be idle")
    np.testing.assert_allclose(
        output(infer(crowded, "other", body())),
        expected(crowded.models / "other" / "1" / "model.onnx"),
        rtol=1e-5,
    )
    assert counter(crowded, "evictions", "busy") == 1
    assert index(crowded)["busy"]["state"] == "AVAILABLE"
    assert counter(crowded, "evictions", "pinned") == 0
    assert counter(crowded, "loads", "other", reason="demand") == 1


def test_timeout_while_loading_is_504_and_the_load_goes_on(crowded: RunningServer) -> None:
    impatient = infer(crowded, "sluggish", body(), **{"X-Request-Timeout-Us": "50000"})
    assert impatient.status_code == 504, impatient.text
    assert "was loading on demand" in impatient.json()["error"]
    assert impatient.headers["x-cold-start"] == "true"
    wait_for(lambda: index(crowded)["sluggish"]["state"] == "READY", "the load to finish")
    patient = infer(crowded, "sluggish", body())
    np.testing.assert_allclose(
        output(patient), expected(crowded.models / "sluggish" / "1" / "model.onnx"), rtol=1e-5
    )
    assert counter(crowded, "loads", "sluggish", reason="demand") == 1
    failures = metric(
        crowded.url, "onnx_serve_request_failure_total",
        model="sluggish", version="", protocol="rest", reason="load_timeout",
    )  # fmt: skip
    assert failures == 1
