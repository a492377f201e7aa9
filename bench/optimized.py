"""Optimised versions served against their originals, side by side in one server.

- the wide MLP (1024 -> 4096 -> 1024) made int8 by dynamic quantization, against fp32;
- the digits CNN (models/digits_cnn) made int8 by static QDQ quantization, calibrated on
  400 training digits, against fp32; its agreement is measured on the 400 held-out digits;
- ResNet-50 made fp16 for CUDA, against fp32 on CUDA, where a CUDA GPU is present.

Each int8/fp16 model is optimised by the server itself at load (``optimize`` in its
config.json), as a user would configure it. Throughput is measured in windows alternating
with the fp32 original (v2 binary, 8 connections, dynamic batching); the ratio is the median
of the pairs' ratios.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.registry.providers import CUDA, usable_providers
from bench import payloads
from bench.models import BUILDERS, RESNET_INPUT, RESNET_OUTPUT, WIDE_WIDTH
from bench.processes import Process, onnx_serve
from bench.report import Row

ROOT = Path(__file__).resolve().parent.parent
CNN = ROOT / "models" / "digits_cnn"
BATCHING: dict[str, Any] = {"dynamic_batching": {}}
CONCURRENCY = 8
WIDE_ROWS = 64
CALIBRATION_DIGITS = 400

WIDE_INT8 = "wide MLP int8 (dynamic), v2 binary, dynamic batching"
CNN_INT8 = "digits CNN int8 (static QDQ), v2 binary, dynamic batching"
RESNET_FP16 = "ResNet-50 fp16 on CUDA, v2 binary, dynamic batching, preferred batch 8"


def gpu_present() -> bool:
    return CUDA in usable_providers()


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The CNN's pictures of every digit, their labels, and the training/held-out split."""
    import importlib.util

    from sklearn.datasets import load_digits

    spec = importlib.util.spec_from_file_location(
        "build_samples", ROOT / "models" / "build_samples.py"
    )
    assert spec is not None and spec.loader is not None
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    digits = load_digits()
    train, held = samples.digits_split(digits.target)
    ink = (digits.images / 16.0).astype(np.float32)
    pictures = np.kron(ink, np.ones((4, 4), np.float32))[:, np.newaxis]  # as build_cnn.py
    return pictures, digits.target, train, held


def write_repository(root: Path, gpu: bool) -> None:
    """The originals and their optimised twins (optimised by the server at load)."""
    wide = BUILDERS["mlp_wide"]().SerializeToString()
    cnn_config = json.loads((CNN / "config.json").read_text())
    models: dict[str, tuple[bytes | Path, dict[str, Any]]] = {
        "mlp_wide_fp32": (wide, BATCHING),
        "mlp_wide_int8": (wide, {**BATCHING, "optimize": {"to": "int8"}}),
        "cnn_fp32": (CNN / "1" / "model.onnx", {**cnn_config, **BATCHING}),
        "cnn_int8": (
            CNN / "1" / "model.onnx",
            {**cnn_config, **BATCHING, "optimize": {"to": "int8-static"}},
        ),
    }
    if gpu:
        resnet = BUILDERS["resnet50"]().SerializeToString()
        on_cuda = {"providers": ["cuda"], "dynamic_batching": {"preferred_batch_sizes": [8]}}
        models["resnet50_fp32_cuda"] = (resnet, on_cuda)
        models["resnet50_fp16_cuda"] = (
            resnet,
            {**on_cuda, "optimize": {"to": "fp16", "provider": "cuda"}},
        )
    for name, (model, config) in models.items():
        target = root / name / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        if isinstance(model, Path):
            shutil.copyfile(model, target)
        else:
            target.write_bytes(model)
        (root / name / "config.json").write_text(json.dumps(config))
    # Calibration samples: training digits first, held-out ones second, so that the step
    # calibrates on the first half and checks on the second.
    pictures, _, train, held = _digits()
    rows = np.concatenate([train[:CALIBRATION_DIGITS], held])
    np.savez(root / "cnn_int8" / "samples.npz", image=pictures[rows])
    shutil.copyfile(CNN / "labels.txt", root / "cnn_int8" / "labels.txt")
    shutil.copyfile(CNN / "labels.txt", root / "cnn_fp32" / "labels.txt")


def answers(process: Process, model: str, name: str, x: np.ndarray, output: str) -> np.ndarray:
    """The model's ``output`` for the rows of ``x``, sent 50 rows a request."""
    parts = []
    for start in range(0, len(x), 50):
        request = payloads.v2_binary(model, name, x[start : start + 50], output)
        response = httpx.post(
            process.url + request.path, content=request.body, headers=request.headers, timeout=60
        )
        if response.is_error:
            raise RuntimeError(f"{model}: {response.status_code} {response.text}")
        parts.append(payloads.outputs_of(response)[output])
    return np.concatenate(parts)


def step_speedups(process: Process, model: str) -> str:
    """What the optimisation step measured, from the model's metadata."""
    meta = httpx.get(f"{process.url}/v2/models/{model}", timeout=10).json()
    batches = meta.get("optimization", {}).get("speed", {}).get("batches", [])
    return ", ".join(f"batch {b['batch']} {b['speedup']:.2f}x" for b in batches) or "none"


def paired(bench: Any, server: Process, name: str, optimized: payloads.Request,
           reference_name: str, original: payloads.Request) -> Row:  # fmt: skip
    def reference(seconds: float) -> Row:
        return bench.load(reference_name, server, original, CONCURRENCY, seconds)

    row: Row = bench.paired(name, server, optimized, CONCURRENCY, reference, "fp32")
    return row


def optimize_section(bench: Any, root: Path) -> None:
    """The rows of this module; ``bench`` is the run's ``Bench``."""
    gpu = gpu_present()
    repo = root / "optimize-models"
    write_repository(repo, gpu)
    # Loading optimises four models (more with a GPU) before the server is ready.
    server = onnx_serve(repo, root / "server-optimize.log").start(timeout=900)
    try:
        _measure(bench, server, gpu)
    finally:
        server.stop()


def _measure(bench: Any, server: Process, gpu: bool) -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((WIDE_ROWS, WIDE_WIDTH)).astype(np.float32)
    fp32 = answers(server, "mlp_wide_fp32", "x", x, "y")
    int8 = answers(server, "mlp_wide_int8", "x", x, "y")
    relative = float(np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32))
    row = paired(
        bench, server, WIDE_INT8, payloads.v2_binary("mlp_wide_int8", "x", x[:1], "y"),
        "wide MLP fp32, v2 binary, dynamic batching",
        payloads.v2_binary("mlp_wide_fp32", "x", x[:1], "y"),
    )  # fmt: skip
    row.quality = {"relative_error": relative}
    row.note = (
        f"relative error of the served int8 answers to the fp32 ones over {WIDE_ROWS} "
        f"random rows: {relative:.4f}; the optimisation step's own latency check: "
        f"{step_speedups(server, 'mlp_wide_int8')}"
    )

    pictures, labels, _, held = _digits()
    images = pictures[held]
    original = answers(server, "cnn_fp32", "image", images, "probabilities").argmax(axis=1)
    quantized = answers(server, "cnn_int8", "image", images, "probabilities").argmax(axis=1)
    agreement = float(np.mean(original == quantized))
    row = paired(
        bench, server, CNN_INT8,
        payloads.v2_binary("cnn_int8", "image", images[:1], "probabilities"),
        "digits CNN fp32, v2 binary, dynamic batching",
        payloads.v2_binary("cnn_fp32", "image", images[:1], "probabilities"),
    )  # fmt: skip
    row.quality = {"top1_agreement": agreement}
    row.note = (
        f"top-1 agreement with fp32 on the {len(held)} held-out digits (none used for "
        f"calibration): {agreement:.4f}; accuracy fp32 "
        f"{np.mean(original == labels[held]):.4f}, int8 {np.mean(quantized == labels[held]):.4f}; "
        f"the optimisation step's own latency check: {step_speedups(server, 'cnn_int8')}"
    )

    if not gpu:
        bench.record(Row(RESNET_FP16, "skipped", note="no CUDA GPU on this machine"))
        return
    batch = payloads.resnet_input()
    reference = answers(server, "resnet50_fp32_cuda", RESNET_INPUT, batch, RESNET_OUTPUT)
    half = answers(server, "resnet50_fp16_cuda", RESNET_INPUT, batch, RESNET_OUTPUT)
    relative = float(np.linalg.norm(half - reference) / np.linalg.norm(reference))
    row = paired(
        bench, server, RESNET_FP16,
        payloads.v2_binary("resnet50_fp16_cuda", RESNET_INPUT, batch, RESNET_OUTPUT),
        "ResNet-50 fp32 on CUDA, v2 binary, dynamic batching, preferred batch 8",
        payloads.v2_binary("resnet50_fp32_cuda", RESNET_INPUT, batch, RESNET_OUTPUT),
    )  # fmt: skip
    row.quality = {"relative_error": relative}
    row.note = f"relative error of fp16 to fp32 on CUDA: {relative:.4f}"


def optimize_targets(rows: list[Row]) -> list[str]:
    """The optimisation targets, each met or missed."""
    checks = [
        (WIDE_INT8, 2.0, "relative_error", 0.03, "wide MLP int8 served c=8 >= 2.0x fp32"),
        (CNN_INT8, 1.5, "top1_agreement", 0.99, "digits CNN int8 (static) c=8 >= 1.5x fp32"),
        (RESNET_FP16, 1.5, "relative_error", 0.05, "ResNet-50 fp16 on CUDA c=8 >= 1.5x fp32"),
    ]
    lines = []
    for name, bound, figure, limit, text in checks:
        row = next((r for r in rows if r.name == name), None)
        if row is None or "fp32" not in row.ratios:
            note = f" ({row.note})" if row is not None and row.note else ""
            lines.append(f"  [ -- ] {text}: not measured{note}")
            continue
        ratio = row.ratios["fp32"]
        value = row.quality.get(figure, float("nan"))
        good = value <= limit if figure == "relative_error" else value >= limit
        mark = "met " if ratio >= bound and good else "MISS"
        sign = "<=" if figure == "relative_error" else ">="
        lines.append(
            f"  [{mark}] {text}: {ratio:.3f}x; {figure.replace('_', ' ')} {value:.4f} "
            f"(target {sign} {limit:g})"
        )
    return lines
