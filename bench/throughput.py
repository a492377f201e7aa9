"""Rows of the server as users run it: what the default log costs, two workers over a few
connections, and batching at the concurrency where batches fill.

- The access log: the small MLP (v2 JSON, c=16) on a server in the default configuration
  (log level info, access log on), against the same server with ``--log-level warning``.
- Two workers and one, each driven over 4 keep-alive connections; the two-worker server's
  access log tells how many requests each worker served in each window (the first 16 hex
  digits of a generated request id are its process's).
- Batching at c=32 and c=64, against raw onnxruntime at batch 8 and at the batch the
  concurrency could fill; the mean batch the server ran comes from its metrics.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import onnxruntime as ort

from bench import payloads
from bench.load import Request
from bench.processes import Process, onnx_serve
from bench.report import Row

if TYPE_CHECKING:
    from bench.__main__ import Bench

Reference = Callable[[float], Row]
#: Connections of the workers rows: a client with a few keep-alive connections.
FEW_CONNECTIONS = 4
# Long enough for the access log's writer (every 0.1 s) to have written a window's lines.
LOG_SETTLE_SECONDS = 0.4
ACCESS_LINE = re.compile(rb"onnx_serve\.access \[([0-9a-f]{16})[0-9a-f]{16}\] \S+ \"POST ")


def log_section(bench: Bench, repo: Path, logs: Path) -> None:
    """The default configuration against ``--log-level warning``, both on ``repo``."""
    request = payloads.v2_json("mlp", "x", payloads.mlp_input())
    with (
        onnx_serve(repo, logs / "server-default.log") as default,
        onnx_serve(repo, logs / "server-warning.log", log_level="warning") as quiet,
    ):

        def reference(seconds: float) -> Row:
            name = "MLP v2 JSON, --log-level warning"
            return bench.load(name, quiet, request, 16, seconds)

        name = "MLP v2 JSON, default configuration"
        row = bench.paired(name, default, request, 16, reference, "log warning")
        row.note = (
            "log level info with the access log on, as `make serve` runs it; the server it is "
            "compared with logs warnings only"
        )


def few_connections_rows(bench: Bench, one: Process, two: Process, log: Path) -> None:
    """Two workers against one over ``FEW_CONNECTIONS`` keep-alive connections, with the
    requests each worker of ``two`` served in each window (from its access log ``log``)."""
    request = payloads.v2_json("mlp", "x", payloads.mlp_input())
    splits: list[list[int]] = []

    def single(seconds: float) -> Row:
        return bench.load("MLP v2 JSON", one, request, FEW_CONNECTIONS, seconds)

    def double(seconds: float) -> Row:
        time.sleep(LOG_SETTLE_SECONDS)
        start = log.stat().st_size
        row = bench.load("MLP v2 JSON", two, request, FEW_CONNECTIONS, seconds, workers=2)
        time.sleep(LOG_SETTLE_SECONDS)
        splits.append(served_per_worker(log, start))
        return row

    row = bench.alternate(double, single, "1 worker")
    row.workers_served = splits
    shares = ", ".join("/".join(str(n) for n in split) for split in splits)
    row.note = f"requests each worker served, window by window (access log): {shares}"


def served_per_worker(log: Path, start: int) -> list[int]:
    """Requests of each worker process logged in ``log`` after byte ``start``, most first."""
    with open(log, "rb") as lines:
        lines.seek(start)
        found = Counter(m.group(1) for m in ACCESS_LINE.finditer(lines.read()))
    return sorted(found.values(), reverse=True)


def batching_rows(
    bench: Bench,
    server: Process,
    session: ort.InferenceSession,
    model: str,
    request: Request,
    feeds: Callable[[int], dict[str, np.ndarray]],
    title: str,
    pairs: int,
    window: float,
) -> None:
    """``model`` (dynamic batching) at c=32 and c=64, against raw onnxruntime's loop at
    batch 8 and at the concurrency's own batch size, in alternating windows of ``window``
    seconds (long enough for a few rounds of the concurrency's requests)."""
    for concurrency in (32, 64):
        for batch in (8, concurrency):
            name = f"{title} v2 binary, dynamic batching, against raw batch {batch}"

            def raw(_: float, rows: int = batch) -> Row:
                name = f"raw onnxruntime, {title} batch {rows}"
                return bench.raw(name, session, feeds(rows), window)

            def served(_: float, name: str = name, c: int = concurrency) -> Row:
                return bench.load(name, server, request, c, window)

            before = run_counts(server, model)
            row = bench.alternate(served, raw, "raw", pairs=pairs)
            rows, runs = (b - a for a, b in zip(before, run_counts(server, model), strict=True))
            row.note = f"mean batch the server ran: {rows / max(runs, 1):.1f} rows"


def run_counts(process: Process, model: str) -> tuple[float, float]:
    """Rows run and session runs of ``model`` so far, from the server's metrics."""
    text = httpx.get(process.url + "/metrics", timeout=10).text
    rows = runs = 0.0
    for line in text.splitlines():
        if f'model="{model}"' not in line:
            continue
        if line.startswith("onnx_serve_inference_count_total{"):
            rows += float(line.rsplit(" ", 1)[1])
        elif line.startswith("onnx_serve_execution_count_total{"):
            runs += float(line.rsplit(" ", 1)[1])
    return rows, runs
