"""The CUDA provider path on a real GPU; skipped where there is none."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.registry.providers import CUDA, usable_providers
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA not in usable_providers(), reason="no CUDA GPU on this machine"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "auto", mlp(seed=3))
    write_model(
        root,
        "strict",
        mlp(seed=3),
        config={"providers": ["cuda"], "require_accelerator": True,
                "instances": {"count": 2, "kind": "gpu", "gpus": [0]}},
    )  # fmt: skip
    write_model(root, "cpu_only", mlp(seed=3), config={"providers": "cpu"})
    # GPU images preload the CUDA libraries that the onnxruntime-gpu wheel's extras install.
    with RunningServer(root, env={"ONNX_SERVE_PRELOAD_CUDA": "true"}) as running:
        yield running


def reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        mlp(seed=3).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    out: np.ndarray = session.run(None, {"x": x})[0]
    return out


@pytest.mark.parametrize(
    ("model", "provider"),
    [("auto", CUDA), ("strict", CUDA), ("cpu_only", "CPUExecutionProvider")],
)
def test_models_run_on_the_provider_asked_for(
    server: RunningServer, model: str, provider: str
) -> None:
    meta = httpx.get(f"{server.url}/v2/models/{model}").json()
    assert meta["providers"][0] == provider, meta
    assert meta["provider_fallback"] == []
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    body = {
        "inputs": [{"name": "x", "shape": [8, 16], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(8, 4)
    # CUDA matmuls may use TF32, which keeps about 10 bits of mantissa.
    np.testing.assert_allclose(got, reference(x), rtol=1e-2, atol=5e-2)


def test_metrics_and_config_name_the_gpu(server: RunningServer) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    assert (
        'onnx_serve_model_ready{model="auto",provider="CUDAExecutionProvider",version="1"} 1.0'
        in text
    )
    config = httpx.get(f"{server.url}/v2/models/strict/config").json()
    assert config["instance_group"][0]["kind"] == "KIND_GPU"
    assert config["instance_group"][0]["count"] == 2
