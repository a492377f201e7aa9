"""What memory this process takes and may take: host memory, the container's limit, GPUs.

A load's host memory is the growth of what the C allocator has handed out and not taken back
(glibc's ``mallinfo2``: onnxruntime's sessions, arenas and weights are all allocated there),
measured before and after it. Unlike the growth of resident memory, this does not depend on
where the allocator put the load's temporary buffers or whether it has given them back to the
system yet: a first load in a thread that leaves 8 MiB of freed buffers at the top of its
heap shows 8 MiB more resident memory, but no more in use. Where ``mallinfo2`` is missing
(another C library) the growth of resident memory (``/proc/self/statm``) stands in.

Device memory comes from NVML (``libnvidia-ml.so.1``, installed with the NVIDIA driver)
through ctypes: the memory in use on each device, all processes together, which is what a
load adds to when the server has the device to itself. Without a driver there are no GPU
figures and no GPU budget can be enforced.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.settings import parse_amount

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
#: cgroup v1 reports "no limit" as a number near 2**63 rounded to pages.
UNLIMITED = 1 << 60


def resident_bytes() -> int:
    """This process's resident memory (RSS) now; 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


def allocated_bytes(mallinfo2: Callable[[], _MallInfo2] | None) -> int:
    """Bytes the C allocator has handed out and not taken back (heaps and mmapped blocks)."""
    if mallinfo2 is None:
        return resident_bytes()
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The container's memory limit (cgroup v2 ``memory.max``, else v1), else the machine's."""
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < UNLIMITED:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 0


def budget_bytes(text: str | None, whole: int, share: int = 1) -> int | None:
    """Bytes of a budget setting (bytes, or a percentage of ``whole``), split ``share`` ways."""
    if text is None:
        return None
    amount, percent = parse_amount(text)
    value = whole * amount / 100 if percent else amount
    return max(1, int(value // max(1, share)))


def release_free_memory() -> None:
    """Hand memory freed by unloaded sessions back to the system (glibc keeps it otherwise,
    and the next load would reuse it unseen by a resident-memory measurement)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def start_runtime(cuda: bool = False) -> None:
    """Create and drop one trivial session (blocking), so that onnxruntime's own start (its
    environment and thread pools, some 8 MiB; with ``cuda``, the CUDA context on device 0,
    some hundreds of MiB of device memory) is not measured as the first model's cost."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "start", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else None
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=providers or ["CPUExecutionProvider"]
        )
        session.run(None, {"x": np.zeros(1, np.float32)})
    except Exception:  # a runtime that cannot start here fails the first real load instead
        log.warning("onnxruntime could not start ahead of the first load", exc_info=True)


HOST = "host"


def gpu_device(index: int) -> str:
    """The label of GPU ``index`` among the kinds of memory (``gpu0``, ``gpu1``...)."""
    return f"gpu{index}"


class _NvmlMemory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class GpuMemory:
    """Device memory in use and in total per GPU, through NVML (no devices without it)."""

    def __init__(
        self, nvml: ctypes.CDLL | None = None, handles: list[ctypes.c_void_p] | None = None
    ):
        self._nvml = nvml
        self._handles = handles or []

    @classmethod
    def open(cls) -> GpuMemory:
        """NVML's devices, or none when there is no NVIDIA driver."""
        try:
            nvml = ctypes.CDLL("libnvidia-ml.so.1")
            if nvml.nvmlInit_v2() != 0:
                return cls()
            count = ctypes.c_uint()
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return cls()
            handles = []
            for index in range(count.value):
                handle = ctypes.c_void_p()
                if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                    return cls()
                handles.append(handle)
        except (OSError, AttributeError):
            return cls()
        log.info("GPU memory is measured through NVML on %d device(s)", len(handles))
        return cls(nvml, handles)

    def _read(self, which: str) -> dict[str, int]:
        out: dict[str, int] = {}
        if self._nvml is None:
            return out
        for index, handle in enumerate(self._handles):
            info = _NvmlMemory()
            if self._nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(info)) == 0:
                out[gpu_device(index)] = int(getattr(info, which))
        return out

    def used(self) -> dict[str, int]:
        """Bytes in use on each device now, by device label."""
        return self._read("used")

    def totals(self) -> dict[str, int]:
        """Each device's memory in bytes, by device label."""
        return self._read("total")


@dataclass(frozen=True, slots=True)
class MemoryCost:
    """Bytes one loaded model version takes, by kind of memory (``host``, ``gpu0``...)."""

    amounts: dict[str, int] = field(default_factory=dict)

    @property
    def host(self) -> int:
        return self.amounts.get(HOST, 0)

    def merged(self, other: MemoryCost) -> MemoryCost:
        """The larger figure of the two for each kind of memory."""
        kinds = sorted(set(self.amounts) | set(other.amounts))
        return MemoryCost({k: max(self.amounts.get(k, 0), other.amounts.get(k, 0)) for k in kinds})

    def as_dict(self) -> dict[str, object]:
        """``{"host_bytes": n, "gpu_bytes": {"0": n}}`` (GPUs only where it has some)."""
        out: dict[str, object] = {"host_bytes": self.host}
        gpus = {k.removeprefix("gpu"): v for k, v in self.amounts.items() if k != HOST}
        if gpus:
            out["gpu_bytes"] = gpus
        return out


class LoadMeasurement:
    """Host and device memory in use before a load; ``cost`` is the growth since."""

    #: glibc's ``mallinfo2``, looked up once (None: resident memory stands in).
    _mallinfo2: Callable[[], _MallInfo2] | None = None
    _looked_up = False

    def __init__(self, gpus: GpuMemory) -> None:
        if not LoadMeasurement._looked_up:
            LoadMeasurement._mallinfo2 = _mallinfo2()
            LoadMeasurement._looked_up = True
        self._gpus = gpus
        self._before = {HOST: allocated_bytes(self._mallinfo2), **gpus.used()}

    def cost(self) -> MemoryCost:
        after = {HOST: allocated_bytes(self._mallinfo2), **self._gpus.used()}
        return MemoryCost(
            {k: max(0, v - self._before[k]) for k, v in after.items() if k in self._before}
        )
