"""The hardware an optimised version is made for: its providers and their options.

An optimised version is checked and served on the provider it was made for; the providers
(with TensorRT's precision modes and engine cache) are recorded in its ``optimization.json``
under ``serve`` and applied when the version loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from app.optimize.errors import OptimizationFailed
from app.registry.model import TensorSpec
from app.registry.providers import CPU, CUDA, TENSORRT, usable_providers

PROVIDERS = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
#: Folder (beside the optimised model) holding TensorRT's engines and calibration table.
ENGINE_CACHE = "trt_engines"

ProviderList = list[tuple[str, dict[str, Any]]]


def require(provider: str) -> None:
    """Refuse a provider this machine cannot run, saying what it has instead."""
    name = PROVIDERS[provider]
    usable = usable_providers()
    if name not in usable:
        what = (
            "TensorRT (an NVIDIA GPU and TensorRT's libraries)"
            if provider == "tensorrt"
            else ("a CUDA GPU")
        )
        raise OptimizationFailed(
            f"provider '{provider}' needs {what}, which this machine does not have: "
            f"onnxruntime {ort.__version__} can use {', '.join(usable)} here"
        )


def _shapes(inputs: list[TensorSpec], batch: int) -> str:
    return ",".join(
        f"{spec.name}:" + "x".join(str(batch if d == -1 else d) for d in spec.shape)
        for spec in inputs
    )


def tensorrt_options(
    kind: str,
    inputs: list[TensorSpec],
    max_batch: int,
    preferred_batch: int,
    calibration_table: str | None,
) -> dict[str, Any]:
    """TensorRT's options for ``kind``; the engine cache path is relative to the model.

    With every input's non-batch dimensions fixed, one optimisation profile covers batch 1
    to ``max_batch``, so one engine serves every batch size and a restart finds it cached.
    """
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": ENGINE_CACHE,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": ENGINE_CACHE,
        "trt_fp16_enable": kind in ("fp16", "int8", "int8-static"),
    }
    if kind in ("int8", "int8-static"):
        options["trt_int8_enable"] = True
    if calibration_table is not None:
        options["trt_int8_calibration_table_name"] = calibration_table
        options["trt_int8_use_native_calibration_table"] = False
    fixed = all(-1 not in spec.shape[1:] for spec in inputs)
    if max_batch > 0 and fixed and inputs:
        options["trt_profile_min_shapes"] = _shapes(inputs, 1)
        options["trt_profile_opt_shapes"] = _shapes(inputs, min(preferred_batch, max_batch))
        options["trt_profile_max_shapes"] = _shapes(inputs, max_batch)
    return options


def serving_providers(provider: str, tensorrt: dict[str, Any] | None) -> list[dict[str, Any] | str]:
    """The ``providers`` list (config.json's shape) the optimised version is served with."""
    if provider == "tensorrt":
        return [{"name": "tensorrt", "options": tensorrt or {}}, "cuda", "cpu"]
    if provider == "cuda":
        return ["cuda", "cpu"]
    return ["cpu"]


def resolved(providers: list[dict[str, Any] | str], folder: Path) -> ProviderList:
    """``providers`` as onnxruntime takes them, TensorRT's cache paths made absolute."""
    out: ProviderList = []
    for entry in providers:
        name, options = (entry, {}) if isinstance(entry, str) else (entry["name"], entry["options"])
        options = dict(options)
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            if key in options:
                options[key] = str(folder / str(options[key]))
        out.append((PROVIDERS.get(name, name), options))
    return out


def absolute(providers: list[dict[str, Any] | str], folder: Path) -> list[dict[str, Any] | str]:
    """``providers`` in config.json's shape, TensorRT's cache paths made absolute."""
    return [
        entry if isinstance(entry, str) else {"name": entry["name"], "options": options}
        for entry, (_, options) in zip(providers, resolved(providers, folder), strict=True)
    ]
