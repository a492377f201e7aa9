"""Process-level collectors, and the exposition over one process or every worker's."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: How often each worker moves its per-request figures into the series shared by workers.
FLUSH_SECONDS = 1.0


def multiprocess_dir() -> str | None:
    """Directory shared by worker processes for aggregated metrics, when running several."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def thread_count() -> int:
    """OS threads of this process, onnxruntime's native ones included (Linux), else Python's."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class RuntimeCollector(Collector):
    """Threads, live onnxruntime sessions and requests in flight of this process, read at
    scrape time.

    Threads and sessions return to their baseline after a model is unloaded; a leak shows as
    growth.
    """

    def __init__(
        self,
        sessions: weakref.WeakSet[object],
        requests: Callable[[], int],
        loop_lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._sessions = sessions
        self._requests = requests
        self._loop_lag = loop_lag

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "onnx_serve_process_threads",
            "OS threads of this process, onnxruntime's included.",
            value=thread_count(),
        )
        yield GaugeMetricFamily(
            "onnx_serve_sessions",
            "onnxruntime sessions alive in this process (serving, or retired but not yet freed).",
            value=len(self._sessions),
        )
        yield GaugeMetricFamily(
            "onnx_serve_requests_in_flight",
            "Requests this process is serving now, over every front end, from their arrival "
            "(a body still uploading included) to their answer.",
            value=self._requests(),
        )
        yield GaugeMetricFamily(
            "onnx_serve_event_loop_lag_seconds",
            "Worst delay of the event loop (a timer firing late) since the previous scrape: "
            "how long every request of this process waited behind work holding the loop.",
            value=self._loop_lag(),
        )


def exposition(registry: CollectorRegistry, runtime: RuntimeCollector) -> bytes:
    """The text exposition of ``registry``, or of every worker's series when there are several.

    Worker processes write their series to shared files (``multiprocess_dir``); the process
    and runtime figures are this worker's own.
    """
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(registry)
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
    ProcessCollector(registry=merged)  # this worker's process only
    merged.register(runtime)
    return generate_latest(merged)


class Flushable(Protocol):
    """What ``flush_periodically`` needs: something that moves its figures into series."""

    def flush(self) -> None: ...


async def flush_periodically(metrics: Flushable, seconds: float = FLUSH_SECONDS) -> None:
    """Flush ``metrics`` every ``seconds`` (until cancelled), and once more when cancelled.

    With several workers, a scrape reads every worker's series from the shared files, so
    each worker must flush on its own for its figures to appear there.
    """
    try:
        while True:
            await asyncio.sleep(seconds)
            metrics.flush()
    finally:
        metrics.flush()
