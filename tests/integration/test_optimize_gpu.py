"""Optimised versions on a GPU: fp16 for CUDA, TensorRT fp16 with its engine cache.

Skipped where there is no CUDA GPU (TensorRT's test also where TensorRT is missing).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from app.cli import main
from app.registry.providers import CUDA, TENSORRT, usable_providers
from tests.conftest import SAMPLE_MODELS
from tests.server import RunningServer

CNN = SAMPLE_MODELS / "digits_cnn"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA not in usable_providers(), reason="no CUDA GPU on this machine"),
]
GPU_ENV = {"ONNX_SERVE_PRELOAD_CUDA": "true"}


def test_cuda_fp16_converts_the_model_and_times_it_on_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "2"
    code = main(["optimize", str(CNN), "--to", "fp16", "--provider", "cuda", "-o", str(out),
                 "--json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    assert report["speed"]["provider"] == CUDA
    assert report["serve"]["providers"] == ["cuda", "cpu"]
    probabilities = report["accuracy"]["outputs"]["probabilities"]
    assert probabilities["top1_agreement"] >= 0.99
    weights = onnx.load(str(out / "model.onnx")).graph.initializer
    assert {w.data_type for w in weights} == {onnx.TensorProto.FLOAT16}


@pytest.mark.skipif(TENSORRT not in usable_providers(), reason="no TensorRT on this machine")
def test_tensorrt_fp16_builds_its_engine_before_ready_and_a_restart_reuses_it(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(CNN, repo / "cnn")
    config = json.loads((CNN / "config.json").read_text())
    config["optimize"] = {"to": "fp16", "provider": "tensorrt"}
    (repo / "cnn" / "config.json").write_text(json.dumps(config))

    def engines() -> dict[str, int]:
        found = (repo / "cnn" / "1" / ".optimized").glob("fp16-tensorrt-*/trt_engines/*.engine")
        return {p.name: p.stat().st_mtime_ns for p in found}

    x = np.zeros((1, 1, 32, 32), np.float32).ravel().tolist()
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 32, 32], "data": x}]}
    with RunningServer(repo, env=GPU_ENV) as server:
        meta = httpx.get(f"{server.url}/v2/models/cnn").json()
        assert meta["providers"][0] == TENSORRT, meta
        assert meta["optimization"]["kind"] == "fp16"
        built = engines()
        assert built, "the warm-up built no engine"
        r = httpx.post(f"{server.url}/v2/models/cnn/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
    assert engines() == built  # the request ran on the engine the warm-up built
    with RunningServer(repo, env=GPU_ENV) as server:
        meta = httpx.get(f"{server.url}/v2/models/cnn").json()
        assert meta["optimization"]["reused"] is True
        assert httpx.post(f"{server.url}/v2/models/cnn/infer", json=body).status_code == 200
    assert engines() == built  # not rebuilt after the restart
