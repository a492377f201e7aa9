"""Execution providers: resolve what a model asks for against what this machine offers."""

from __future__ import annotations

import ctypes
import glob
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import onnxruntime as ort

from app.registry.config import InstancesConfig, ProviderSpec

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ACCELERATORS = (TENSORRT, CUDA)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}

ProviderOptions = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class ProviderChoice:
    """Ordered providers with their options, as passed to ``InferenceSession``."""

    names: list[str]
    options: list[ProviderOptions] = field(default_factory=list)


def cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: the cgroup v2 ``cpu.max`` quota, else the affinity mask."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    count = affinity or os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


@cache
def gpu_present() -> bool:
    """Whether an NVIDIA GPU and its driver are visible to this process."""
    if not glob.glob("/dev/nvidia[0-9]*"):
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@cache
def tensorrt_present() -> bool:
    """Whether the TensorRT runtime library can be loaded."""
    for lib in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(lib)
        except OSError:
            continue
        return True
    return False


def usable_providers() -> list[str]:
    """Providers onnxruntime offers that can work here (accelerators need their device)."""
    offered = ort.get_available_providers()
    usable = []
    for name in offered:
        if name in ACCELERATORS and not gpu_present():
            continue
        if name == TENSORRT and not tensorrt_present():
            continue
        usable.append(name)
    return usable


def resolve(
    spec: str | list[ProviderSpec | str],
    instances: InstancesConfig,
    device_id: int | None,
    usable: list[str],
) -> tuple[ProviderChoice, list[str]]:
    """The providers to ask for, and the requested ones this machine cannot give."""
    if instances.kind == "cpu" or spec == "cpu":
        return ProviderChoice([CPU], [{}]), []
    wanted: list[ProviderSpec]
    if spec == "auto":
        wanted = [ProviderSpec(name=n) for n in (TENSORRT, CUDA, CPU)]
        missing_ok = True
    elif isinstance(spec, str):
        wanted = [ProviderSpec(name=n.strip()) for n in spec.split(",") if n.strip()]
        missing_ok = False
    else:
        wanted = [ProviderSpec(name=s) if isinstance(s, str) else s for s in spec]
        missing_ok = False
    names: list[str] = []
    options: list[ProviderOptions] = []
    missing: list[str] = []
    for item in wanted:
        name = ALIASES.get(item.name.lower(), item.name)
        if name in names:
            continue
        if name not in usable:
            if not missing_ok:
                missing.append(name)
            continue
        opts: ProviderOptions = dict(item.options)
        if name in ACCELERATORS and device_id is not None:
            opts.setdefault("device_id", device_id)
        names.append(name)
        options.append(opts)
    if instances.kind == "gpu" and not any(n in ACCELERATORS for n in names):
        missing.extend(n for n in (CUDA,) if n not in missing)
    if CPU not in names:
        names.append(CPU)
        options.append({})
    return ProviderChoice(names, options), missing
