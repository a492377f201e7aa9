"""Helpers for the model lifecycle tests: uploads, reference outputs, disk snapshots."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import numpy_helper

from tests.onnx_models import mlp

KEY = "lifecycle-management-key"
AUTH = {"X-API-Key": KEY}
X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)


def model_bytes(seed: int = 0) -> bytes:
    return mlp(seed=seed).SerializeToString()


def reference(seed: int, x: np.ndarray = X) -> np.ndarray:
    """What ``mlp(seed=seed)`` computes for ``x``, in numpy."""
    w1, w2 = (numpy_helper.to_array(t) for t in mlp(seed=seed).graph.initializer)
    result: np.ndarray = np.maximum(x @ w1, 0) @ w2
    return result


def upload(
    client: httpx.Client, name: str, model: bytes | onnx.ModelProto, **fields: str
) -> httpx.Response:
    content = model if isinstance(model, bytes) else model.SerializeToString()
    return client.post(
        "/models",
        data={"name": name, **fields},
        files={"file": ("model.onnx", content, "application/octet-stream")},
    )


def infer(client: httpx.Client, name: str, x: np.ndarray = X) -> httpx.Response:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip
    return client.post(f"/v2/models/{name}/infer", json=body)


def output(response: httpx.Response) -> tuple[str, np.ndarray]:
    """The version that answered and its output ``y``."""
    assert response.status_code == 200, response.text
    doc = response.json()
    out = doc["outputs"][0]
    return doc["model_version"], np.asarray(out["data"], np.float32).reshape(out["shape"])


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (server logs aside) with its content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".log")
    }


def staging_entries(repository: Path) -> list[str]:
    staging = repository / ".staging"
    return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
