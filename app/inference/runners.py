"""Runners: what runs a version's validated feeds, behind one interface (``Runner``).

A version is served by its session pool directly (``PoolRunner``), or by a dynamic batcher in
front of that pool (``app.inference.batching``), as its config says. The data plane calls
``runner.run`` and never asks which one it has. Both map runtime failures with
``app.inference.failures.runtime_error``.
"""

from __future__ import annotations

from app.inference.batching import batcher_for
from app.inference.failures import runtime_error
from app.metrics import Metrics
from app.metrics.series import count_execution
from app.registry.model import Feeds, ModelVersion, RunContext, Runner, RunResult


class PoolRunner:
    """Runs each request on its own session run, waiting for a free session if need be."""

    __slots__ = ("_pool", "_series", "_default_timeout_us", "_warmed", "_max_waiting")

    def __init__(
        self,
        model: ModelVersion,
        metrics: Metrics,
        default_timeout_us: int = 0,
        max_waiting: int = 0,
    ) -> None:
        self._pool = model.pool
        #: Requests that may wait for a session (0: no limit); more get a 503.
        self._max_waiting = max_waiting
        self._warmed = model.config.warmup.enabled
        self._series = metrics.series(model.name, str(model.version))
        #: Wait for a session of requests that set no timeout (0: none).
        self._default_timeout_us = default_timeout_us

    async def run(
        self, feeds: Feeds, outputs: list[str], rows: int, context: RunContext
    ) -> RunResult:
        timeout_us = context.timeout_us
        if timeout_us is None:
            timeout_us = self._default_timeout_us
        try:
            results, queued, computed = await self._pool.run(
                feeds,
                outputs,
                queue_timeout=timeout_us / 1e6 if timeout_us > 0 else None,
                abandoned=context.disconnected,
                max_waiting=self._max_waiting,
            )
        except Exception as exc:
            raise runtime_error(exc, self._warmed) from None
        count_execution(self._series, rows, computed)
        return dict(zip(outputs, results, strict=True)), queued, computed

    async def close(self) -> None:
        """Nothing waits here: the pool's own retirement fails whatever would."""


def runner_for(
    model: ModelVersion, metrics: Metrics, default_timeout_us: int = 0, max_waiting: int = 0
) -> Runner:
    """The model's dynamic batcher when its config enables one (it has a queue bound of its
    own), else its pool, where at most ``max_waiting`` requests wait (0: no limit)."""
    batcher = batcher_for(model, metrics, default_timeout_us)
    if batcher is not None:
        return batcher
    return PoolRunner(model, metrics, default_timeout_us, max_waiting)
