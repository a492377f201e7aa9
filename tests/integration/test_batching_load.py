"""Thousands of concurrent requests through the dynamic batcher, each checked for its rows.

Every request carries its own random rows and is answered through a different front door
(v2 JSON, v2 binary, /predict, KServe v1); each answer is compared with the same model run
unbatched in this process by onnxruntime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.onnx_models import probe, write_model
from tests.server import RunningServer

REQUESTS = 2000
CONCURRENCY = 48
WIDTH = 6
# Each run loops this often (about a millisecond), long enough that requests from this many
# connections often find the one instance busy and queue together.
SPIN = 200
HEADER = "Inference-Header-Content-Length"
Inputs = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    return write_model(root, "probe", probe(WIDTH), config={"dynamic_batching": {}})


@pytest.fixture(scope="module")
def server(model_file: Path) -> Iterator[RunningServer]:
    root = model_file.parent.parent.parent
    with RunningServer(root, log_path=root.parent / "server.log") as running:
        yield running


def random_inputs(rng: np.random.Generator) -> Inputs:
    rows = int(rng.integers(1, 4))
    return {
        "x": rng.standard_normal((rows, WIDTH)).astype(np.float32),
        "idx": rng.integers(0, 5, (rows, 1)),
        "spin": np.full((rows, 1), SPIN, dtype=np.int64),
    }


def v2_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = "FP32" if array.dtype == np.float32 else "INT64"
    return {"name": name, "shape": list(array.shape), "datatype": datatype}


def v2_json(inputs: Inputs) -> tuple[str, dict[str, str], bytes]:
    tensors = [{**v2_tensor(n, a), "data": a.ravel().tolist()} for n, a in inputs.items()]
    return "/v2/models/probe/infer", {}, orjson.dumps({"inputs": tensors})


def v2_binary(inputs: Inputs) -> tuple[str, dict[str, str], bytes]:
    blobs = [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in inputs.values()]
    tensors = [
        {**v2_tensor(n, a), "parameters": {"binary_data_size": len(b)}}
        for (n, a), b in zip(inputs.items(), blobs, strict=True)
    ]
    header = orjson.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}})
    return "/v2/models/probe/infer", {HEADER: str(len(header))}, b"".join([header, *blobs])


def predict(inputs: Inputs) -> tuple[str, dict[str, str], bytes]:
    named = {n: a.tolist() for n, a in inputs.items()}
    return "/predict", {}, orjson.dumps({"model": "probe", "inputs": named})


def v1(inputs: Inputs) -> tuple[str, dict[str, str], bytes]:
    rows = len(inputs["x"])
    instances = [{n: a[i].tolist() for n, a in inputs.items()} for i in range(rows)]
    return "/v1/models/probe:predict", {}, orjson.dumps({"instances": instances})


def decode(kind: str, response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    if kind == "v2_binary":
        length = int(response.headers[HEADER])
        header = orjson.loads(response.content[:length])
        offset = length
        out = {}
        for o in header["outputs"]:
            size = o["parameters"]["binary_data_size"]
            data = response.content[offset : offset + size]
            out[o["name"]] = np.frombuffer(data, "<f4").reshape(o["shape"])
            offset += size
        return out
    doc = response.json()
    if kind == "v2_json":
        return {
            o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in doc["outputs"]
        }
    if kind == "predict":
        return {n: np.array(v, np.float32) for n, v in doc["outputs"].items()}
    rows = doc["predictions"]
    return {n: np.array([row[n] for row in rows], np.float32) for n in ("y", "g")}


ENCODERS = {"v2_json": v2_json, "v2_binary": v2_binary, "predict": predict, "v1": v1}


def batch_metrics(server: RunningServer) -> tuple[float, float]:
    """Session runs and the rows they computed, for the probe model."""
    text = httpx.get(server.url + "/metrics").text
    runs = rows = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != "probe":
                continue
            if s.name == "onnx_serve_batch_size_count":
                runs = s.value
            elif s.name == "onnx_serve_batch_size_sum":
                rows = s.value
    return runs, rows


def test_concurrent_requests_get_their_own_rows(server: RunningServer, model_file: Path) -> None:
    rng = np.random.default_rng(11)
    reference = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    kinds = list(ENCODERS)
    plan = [(kinds[i % len(kinds)], random_inputs(rng)) for i in range(REQUESTS)]
    # The outputs do not depend on spin, so the reference skips the loop.
    expected = []
    for _, inputs in plan:
        y, g = reference.run(None, {**inputs, "spin": 0 * inputs["spin"]})
        expected.append({"y": y, "g": g})
    results: list[dict[str, np.ndarray] | None] = [None] * REQUESTS

    async def drive() -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
            todo = iter(range(REQUESTS))

            async def worker() -> None:
                for i in todo:
                    kind, inputs = plan[i]
                    path, headers, content = ENCODERS[kind](inputs)
                    response = await client.post(path, content=content, headers=headers)
                    results[i] = decode(kind, response)

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    asyncio.run(drive())
    for i, ((kind, _), want, got) in enumerate(zip(plan, expected, results, strict=True)):
        assert got is not None
        for name in ("y", "g"):
            np.testing.assert_allclose(
                got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=f"request {i} ({kind})"
            )

    runs, rows = batch_metrics(server)
    assert rows == sum(len(inputs["x"]) for _, inputs in plan)
    # Requests that found the one instance busy queued together and shared runs.
    assert runs < REQUESTS, (runs, rows)
