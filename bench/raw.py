"""The limit: onnxruntime called in a loop in this process, with the server's session options."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.registry.config import ModelConfig
from app.registry.model import session_options
from app.registry.providers import cpu_quota


@dataclass(frozen=True, slots=True)
class LoopResult:
    """Runs of one session in a closed loop: how many, over how long, how many rows each."""

    runs: int
    seconds: float
    batch: int
    latencies: list[float]

    @property
    def runs_per_second(self) -> float:
        return self.runs / self.seconds

    @property
    def rows_per_second(self) -> float:
        return self.runs * self.batch / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else 0.0


def server_session(path: Path, config: ModelConfig | None = None) -> ort.InferenceSession:
    """A CPU session built as the server builds one instance of this model."""
    config = config or ModelConfig()
    threads = max(1, cpu_quota() // config.instances.count)
    options = session_options(config.session, threads)
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_loop(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float
) -> LoopResult:
    """Run ``feeds`` back to back for ``seconds`` (after one warm-up run)."""
    session.run(None, feeds)
    batch = next(iter(feeds.values())).shape[0]
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        session.run(None, feeds)
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    return LoopResult(len(latencies), now - start, batch, latencies)
