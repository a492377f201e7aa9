"""Device memory of models on a real GPU: measured through NVML and shown; skipped where
there is no CUDA GPU."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.registry.memory import GpuMemory
from app.registry.providers import CUDA, usable_providers
from tests.http_probes import metric
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA not in usable_providers(), reason="no CUDA GPU on this machine"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    config = {"providers": ["cuda"], "require_accelerator": True, "load": "on_demand"}
    write_model(root, "on_gpu", mlp(16, 4096, 4, seed=3), config=config)
    env = {"ONNX_SERVE_PRELOAD_CUDA": "true", "ONNX_SERVE_GPU_MEMORY_BUDGET": "90%"}
    with RunningServer(root, env=env) as running:
        yield running


def test_nvml_sees_the_devices() -> None:
    totals = GpuMemory.open().totals()
    assert totals and all(size > 0 for size in totals.values())


def test_a_model_on_the_gpu_shows_its_device_memory(server: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
    r = httpx.post(f"{server.url}/v2/models/on_gpu/infer", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["x-cold-start"] == "true"
    memory = httpx.get(f"{server.url}/v2/models/on_gpu", timeout=30).json()["memory"]
    assert "0" in memory["gpu_bytes"], memory
    gauge = metric(server.url, "onnx_serve_model_memory_bytes", model="on_gpu", version="1",
                   device="gpu0")  # fmt: skip
    assert gauge == memory["gpu_bytes"]["0"]
    assert metric(server.url, "onnx_serve_memory_budget_bytes", device="gpu0") > 0
