"""Triton's perf_analyzer, unchanged, measures a real server at several concurrencies.

perf_analyzer reads the model's metadata and config, sends requests at each concurrency until
its measurements are stable, and reads ``/v2/models/{m}/stats`` around each window: it aborts
when compute_input, compute_infer and compute_output counts differ ("Server side statistics
compute counts must be the same"), and reports the server's queue and compute times. The
binary is installed from PyPI by ``tests/perf_analyzer.py``; the test skips, saying why, where
that cannot be done.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.onnx_models import triton_simple, write_model
from tests.perf_analyzer import PerfAnalyzer, Unavailable, install
from tests.server import RunningServer

CONCURRENCIES = [1, 3]
# Two shared cores make latency noisy: a window counts a fixed number of requests and
# windows within 100% of each other count as stable (this checks function, not speed).
MEASUREMENT = [
    "--concurrency-range", f"{CONCURRENCIES[0]}:{CONCURRENCIES[-1]}:{CONCURRENCIES[1] - 1}",
    "--measurement-mode", "count_windows", "--measurement-request-count", "150",
    "--stability-percentage", "100", "--max-trials", "10",
]  # fmt: skip
SERVER_LINE = re.compile(
    r"queue (\d+) usec \+ compute input (\d+) usec \+ compute infer (\d+) usec \+ "
    r"compute output (\d+) usec"
)


@pytest.fixture(scope="module")
def perf_analyzer() -> PerfAnalyzer:
    try:
        return install()
    except Unavailable as exc:
        pytest.skip(f"perf_analyzer cannot be installed here: {exc}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("perf") / "models"
    write_model(root, "simple", triton_simple("INT32"), config={"max_batch_size": 8})
    batching = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_us": 500}}
    write_model(root, "simple_batched", triton_simple("FP32"), config=batching)
    with RunningServer(root) as running:
        yield running


@pytest.mark.parametrize(
    ("model", "protocol"),
    [("simple", "http"), ("simple", "grpc"), ("simple_batched", "http")],
)
def test_perf_analyzer_runs_to_completion(
    perf_analyzer: PerfAnalyzer, server: RunningServer, tmp_path: Path, model: str, protocol: str
) -> None:
    url = server.grpc_address if protocol == "grpc" else server.host_port
    report = tmp_path / "report.csv"
    done = perf_analyzer.run(
        ["-m", model, "-u", url, "-i", protocol, *MEASUREMENT, "-f", str(report)], timeout=240
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "compute counts must be the same" not in output
    for concurrency in CONCURRENCIES:
        assert f"Request concurrency: {concurrency}" in output, output[-3000:]
    # The server's side of each measurement: real queue and compute times.
    assert len(SERVER_LINE.findall(output)) == len(CONCURRENCIES), output[-3000:]
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(row["Concurrency"]) for row in rows) == CONCURRENCIES
    for row in rows:
        assert float(row["Inferences/Second"]) > 0
    # What perf_analyzer read: every answered request counted in each phase, with real times.
    (stats,) = httpx.get(f"{server.url}/v2/models/{model}/stats").json()["model_stats"]
    phases = stats["inference_stats"]
    answered = phases["success"]["count"]
    assert answered >= len(CONCURRENCIES) * 150
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert phases[phase]["count"] == answered, phases
        assert phases[phase]["ns"] > 0, phases
