"""Rows of the benchmark, the table they print as, and the targets they are held to."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from app.registry.providers import cpu_quota


@dataclass
class Row:
    """One measurement: a raw loop, the ceiling, or the server under a load."""

    name: str
    kind: str
    concurrency: int = 0
    rows_per_request: int = 1
    per_second: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    tool: str = ""
    workers: int = 1
    server_cpu: float = 0.0
    foreign_cpu: float = 0.0
    requests: int = 0
    ratios: dict[str, float] = field(default_factory=dict)
    #: The lowest and highest ratio over the pairs of windows behind a median ratio.
    spread: dict[str, tuple[float, float]] = field(default_factory=dict)
    note: str = ""
    metrics_ok: bool | None = None
    #: Accuracy figures of an optimised model's answers (relative error, top-1 agreement).
    quality: dict[str, float] = field(default_factory=dict)
    #: Requests each worker served, window by window (several workers).
    workers_served: list[list[int]] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.per_second * self.rows_per_request

    def label(self) -> str:
        if self.kind == "raw" or self.kind == "skipped":
            return self.name
        workers = f", {self.workers} workers" if self.workers > 1 else ""
        return f"{self.name}, c={self.concurrency}{workers}"

    def line(self) -> str:
        if self.kind == "skipped":
            return f"  skipped {self.name}: {self.note}"
        ratios = " ".join(f"{k}={_ratio(self, k)}" for k in self.ratios)
        unit = "runs/s" if self.kind == "raw" else "req/s"
        return (
            f"  {self.label():<56} {self.per_second:9.1f} {unit}  p50 {self.p50_ms:7.2f} ms  "
            f"p99 {self.p99_ms:7.2f} ms  errors {self.errors}  others' CPU "
            f"{self.foreign_cpu:4.0%} {ratios}"
        )


def _ratio(row: Row, key: str) -> str:
    value = row.ratios.get(key)
    if value is None:
        return ""
    low_high = row.spread.get(key)
    if low_high is None:
        return f"{value:.2f}x"
    return f"{value:.2f}x ({low_high[0]:.2f}-{low_high[1]:.2f})"


def print_table(rows: list[Row]) -> None:
    """Print the rows as a Markdown table."""
    print(
        "| measurement | rows/req | req/s (runs/s) | p50 ms | p99 ms | errors | vs raw | "
        "vs ceiling | vs 1 worker | vs fp32 | vs log warning | server CPU | others' CPU | tool |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        if row.kind == "skipped":
            print(f"| {row.label()} | | | | | | | | | | | | | skipped: {row.note} |")
            continue
        cpu = f"{row.server_cpu:.0%}" if row.kind != "raw" else f"{row.server_cpu:.0%} (loop)"
        print(
            f"| {row.label()} | {row.rows_per_request} | {row.per_second:.1f} | "
            f"{row.p50_ms:.2f} | {row.p99_ms:.2f} | {row.errors} | {_ratio(row, 'raw')} | "
            f"{_ratio(row, 'ceiling')} | {_ratio(row, '1 worker')} | {_ratio(row, 'fp32')} | "
            f"{_ratio(row, 'log warning')} | {cpu} | "
            f"{row.foreign_cpu:.0%} | {row.tool} |"
        )
    for row in rows:
        if row.note and row.kind != "skipped":
            print(f"\n{row.label()}: {row.note}")


def _find(rows: list[Row], name: str, concurrency: int, workers: int = 1) -> Row | None:
    for row in rows:
        if (row.name, row.concurrency, row.workers, row.kind) == (
            name,
            concurrency,
            workers,
            "server",
        ):
            return row
    return None


RAW_RESNET = "raw onnxruntime, ResNet-50 batch"
WIDE_BATCHING = "wide MLP v2 binary, dynamic batching"


def targets(rows: list[Row]) -> str:
    """The issue's targets, each met or missed, as text."""
    checks = [
        ("ResNet-50 v2 binary", 4, "raw", 0.95, "ResNet-50 binary c=4 >= 0.95x raw batch-1"),
        (
            "ResNet-50 v2 binary, dynamic batching",
            8,
            "raw",
            1.05,
            "ResNet-50 dynamic batching (default config) c=8 >= 1.05x raw batch-1",
        ),
        (
            "ResNet-50 v2 binary, dynamic batching, preferred batch 4",
            8,
            "raw",
            1.05,
            "ResNet-50 dynamic batching (preferred batch 4) c=8 >= 1.05x raw batch-1",
        ),
        ("ResNet-50 v2 JSON", 4, "raw", 0.80, "ResNet-50 JSON c=4 >= 0.80x raw batch-1"),
        (
            "MLP v2 JSON",
            16,
            "ceiling",
            0.25,
            "MLP JSON v2 c=16, 1 worker, default configuration >= 0.25x bare ASGI",
        ),
        ("MLP /predict JSON", 16, "ceiling", 0.25, "MLP /predict c=16, 1 worker >= 0.25x bare"),
        (
            "MLP v2 JSON, default configuration",
            16,
            "log warning",
            0.95,
            "MLP v2 JSON c=16, default configuration (info, access log) >= 0.95x --log-level "
            "warning",
        ),
        (
            f"{WIDE_BATCHING}, against raw batch 8",
            64,
            "raw",
            0.6,
            "wide MLP dynamic batching c=64 >= 0.6x raw batch-8 rows/s",
        ),
        (
            "ResNet-50 gRPC raw tensors",
            4,
            "raw",
            0.95,
            "ResNet-50 gRPC raw tensors c=4 >= 0.95x raw batch-1",
        ),
        (
            "MLP gRPC raw tensors",
            16,
            "ceiling",
            0.6,
            "MLP gRPC c=16 >= 0.6x bare grpcio server",
        ),
    ]
    lines = ["Targets:"]
    for name, concurrency, key, bound, text in checks:
        row = _find(rows, name, concurrency)
        if row is None or key not in row.ratios:
            lines.append(f"  [ -- ] {text}: not measured")
            continue
        value = row.ratios[key]
        extra = f", p99 {row.p99_ms:.0f} ms" if "batching" in name else ""
        mark = "met " if value >= bound else "MISS"
        lines.append(f"  [{mark}] {text}: {value:.3f}x{extra}")
    gains = [
        f"batch {r.rows_per_request} {r.ratios['raw']:.3f}x"
        for r in rows
        if r.kind == "raw"
        and r.name.startswith("raw onnxruntime, ResNet-50 batch")
        and "raw" in r.ratios
    ]
    if gains:
        lines.append(
            "  (what batching gains in raw onnxruntime itself, images a second against the "
            f"batch-1 loop, alternating windows: {', '.join(gains)})"
        )
    for row in rows:
        if row.name.startswith("MLP gRPC") and row.metrics_ok is not None:
            ok = "met " if row.metrics_ok else "MISS"
            lines.append(f"  [{ok}] gRPC calls counted exactly: {row.note}")
    doubles = [r for r in rows if r.workers == 2 and r.kind == "server"]
    if not doubles:
        lines.append("  [ -- ] 2 workers: not measured")
    for row in doubles:
        rise = row.ratios.get("1 worker")
        # Over a few connections the workers must share them: 1.4x one worker asked.
        bound = 1.4 if row.workers_served else 1.0
        if rise is not None:
            mark = "met " if rise >= bound else "MISS"
            lines.append(
                f"  [{mark}] 2 workers vs 1 (side by side), {row.name}, "
                f"c={row.concurrency}: {rise:.3f}x (>= {bound}x)"
            )
        if row.workers_served:
            both = all(len(s) == 2 and min(s) > 0 for s in row.workers_served)
            least = min((min(s) / sum(s) if len(s) == 2 else 0.0) for s in row.workers_served)
            lines.append(
                f"  [{'met ' if both else 'MISS'}] 2 workers, {row.concurrency} connections: both "
                f"served in every window (least share of a window {least:.0%})"
            )
        if row.metrics_ok is not None:
            ok = "met " if row.metrics_ok else "MISS"
            lines.append(f"  [{ok}] 2 workers, metrics add up: {row.note}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(module: str) -> str:
    try:
        imported = __import__(module)
        return str(getattr(imported, "__version__", "?"))
    except ImportError:
        return "absent"


def machine() -> str:
    """A description of this machine and the software measured."""
    memory = ""
    try:
        total = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        memory = f", {int(total) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, IndexError, ValueError):
        pass
    wrk = shutil.which("wrk")
    wrk_version = "absent"
    if wrk is not None:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (out.stdout or out.stderr).split("\n", 1)[0].split(" [")[0]
    load = os.getloadavg()
    return (
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs (quota {cpu_quota()}){memory}; "
        f"{platform.system()} {platform.release()}\n"
        f"Software: Python {platform.python_version()}, onnxruntime {_version('onnxruntime')}, "
        f"numpy {_version('numpy')}, uvicorn {_version('uvicorn')}, {wrk_version}\n"
        f"Load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
