"""Prometheus metrics over an injected registry, used through one context manager a request."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.errors import ServingError

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODEL_LABELS = ("model", "version")
#: How often each worker moves its per-request figures into the series shared by workers.
FLUSH_SECONDS = 1.0


def multiprocess_dir() -> str | None:
    """Directory shared by worker processes for aggregated metrics, when running several."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass
class Duration:
    """A count of events and their total nanoseconds (Triton's statistics shape)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """This process's statistics for one model version, for ``GET /v2/models/{m}/stats``."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        empty = Duration().as_dict()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": empty,
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": empty,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": empty,
                    "compute_infer": d.as_dict(),
                    "compute_output": empty,
                }
                for size, d in sorted(self.batches.items())
            ],
        }


class _Histogram(Histogram):
    """A Histogram that also takes observations counted elsewhere (``Tally``), in bulk."""

    def add(self, counts: list[int], total: float) -> None:
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        self._sum.inc(total)


class Tally:
    """Observations counted into a histogram's buckets as plain numbers, to be moved into
    its Prometheus series later (``take``); cheaper than the series' locked updates. Their
    sum is kept by the caller (in ``ModelStats``)."""

    __slots__ = ("bounds", "counts")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        # The bucket of ``value`` is the first bound it does not exceed (le), as Prometheus'.
        self.counts[bisect_left(self.bounds, value)] += 1

    def take(self) -> list[int] | None:
        """The counts since the last call (None when there were none), then zero again."""
        if not any(self.counts):
            return None
        taken = self.counts
        self.counts = [0] * len(taken)
        return taken


class ModelSeries:
    """One model version's per-request figures.

    The hot path counts into ``stats`` (cumulative; also what ``/v2/models/{m}/stats``
    serves) and into bucket tallies; ``flush`` moves what changed since the last flush into
    the version's Prometheus series (at every scrape of this process, and every
    ``FLUSH_SECONDS`` when worker processes share their series). Locked Prometheus updates,
    nine a request, cost more than a small model's run. Everything here runs on the event
    loop thread.
    """

    __slots__ = (
        "model",
        "version",
        "stats",
        "inflight",
        "request_seconds",
        "queue_seconds",
        "compute_seconds",
        "batch_size",
        "_inflight",
        "_counters",
        "_histograms",
        "_flushed",
    )

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.model = model
        self.version = version
        self.stats = metrics.stats_for(model, version)
        self.inflight = 0
        self.request_seconds = Tally(LATENCY_BUCKETS)
        self.queue_seconds = Tally(LATENCY_BUCKETS)
        self.compute_seconds = Tally(LATENCY_BUCKETS)
        self.batch_size = Tally(BATCH_BUCKETS)
        self._inflight = metrics.inflight.labels(model, version)
        # In the order of ``_totals``.
        self._counters: tuple[Counter, ...] = (
            metrics.request_success.labels(model, version),
            metrics.execution_count.labels(model, version),
            metrics.inference_count.labels(model, version),
        )
        self._histograms: tuple[_Histogram, ...] = (
            metrics.batch_size.labels(model, version),
            metrics.request_seconds.labels(model, version),
            metrics.queue_seconds.labels(model, version),
            metrics.compute_seconds.labels(model, version),
        )
        # The totals of ``stats`` at the last flush (see ``_totals``).
        self._flushed = (0, 0, 0, 0, 0, 0)

    def _totals(self) -> tuple[int, int, int, int, int, int]:
        """Successes, session runs, inferences (the batch sizes' sum) and the nanoseconds
        of requests, queue waits and compute, counted since the series began."""
        stats = self.stats
        return (
            stats.success.count,
            stats.execution_count,
            stats.inference_count,
            stats.success.ns + stats.fail.ns,
            stats.queue.ns,
            stats.compute_infer.ns,
        )

    def flush(self) -> None:
        """Move what was counted since the last flush into the Prometheus series."""
        self._inflight.set(self.inflight)
        totals = self._totals()
        changes = [now - before for now, before in zip(totals, self._flushed, strict=True)]
        self._flushed = totals
        for counter, change in zip(self._counters, changes, strict=False):
            if change:
                counter.inc(change)
        rows, *nanoseconds = changes[2:]
        sums = (rows, *(ns / 1e9 for ns in nanoseconds))
        tallies = (self.batch_size, self.request_seconds, self.queue_seconds, self.compute_seconds)
        for histogram, tally, total in zip(self._histograms, tallies, sums, strict=True):
            counts = tally.take()
            if counts is not None:
                histogram.add(counts, total)


class RequestObservation:
    """One request to a known model: a context manager that times it and counts its success
    or failure reason, and what it reports while it runs (its queue and compute time)."""

    __slots__ = ("_metrics", "_series", "_start")

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._series = metrics.series(model, version)
        self._start = 0.0

    def __enter__(self) -> RequestObservation:
        self._series.inflight += 1
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        series = self._series
        elapsed = time.perf_counter() - self._start
        if exc is None:
            series.stats.success.add(elapsed)
        else:
            reason = exc.reason if isinstance(exc, ServingError) else "internal"
            self._metrics.request_failure.labels(series.model, series.version, reason).inc()
            series.stats.fail.add(elapsed)
        series.inflight -= 1
        series.request_seconds.observe(elapsed)

    def ran(self, queued: float, computed: float, rows: int | None = None) -> None:
        """Report the request's wait for a session or batch and the compute time of its run;
        with ``rows``, also count that run (made for this request alone; a batcher counts
        its merged runs itself, with ``Metrics.executed``)."""
        series = self._series
        series.queue_seconds.observe(queued)
        series.stats.queue.add(queued)
        series.compute_seconds.observe(computed)
        series.stats.compute_infer.add(computed)
        if rows is not None:
            count_execution(series, rows, computed)


def count_execution(series: ModelSeries, rows: int, seconds: float) -> None:
    """Count one session run of ``series``' model over ``rows`` inferences in ``seconds``."""
    series.batch_size.observe(rows)
    stats = series.stats
    stats.execution_count += 1
    stats.inference_count += rows
    stats.last_inference_ms = int(time.time() * 1000)
    batch = stats.batches.get(rows)
    if batch is None:
        batch = stats.batches[rows] = Duration()
    batch.add(seconds)


def thread_count() -> int:
    """OS threads of this process, onnxruntime's native ones included (Linux), else Python's."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


class RuntimeCollector(Collector):
    """Threads and live onnxruntime sessions of this process, read at scrape time.

    Both return to their baseline after a model is unloaded; a leak shows as growth.
    """

    def __init__(self, sessions: weakref.WeakSet[object]) -> None:
        self._sessions = sessions

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


class Metrics:
    """Every series the service exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats: dict[tuple[str, str], ModelStats] = {}
        self._series: dict[tuple[str, str], ModelSeries] = {}
        ProcessCollector(registry=self.registry)
        # Sessions are held weakly: one that stays counted after its unload has leaked.
        self.live_sessions: weakref.WeakSet[object] = weakref.WeakSet()
        self.registry.register(RuntimeCollector(self.live_sessions))
        r = self.registry
        self.request_success = Counter(
            "onnx_serve_request_success",
            "Inference requests that succeeded.",
            MODEL_LABELS,
            registry=r,
        )
        self.request_failure = Counter(
            "onnx_serve_request_failure",
            "Inference requests that failed, by reason.",
            (*MODEL_LABELS, "reason"),
            registry=r,
        )
        self.request_seconds = _Histogram(
            "onnx_serve_request_duration_seconds",
            "Time from request arrival at the model to its answer.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = _Histogram(
            "onnx_serve_queue_duration_seconds",
            "Time a request waited for a session or a batch.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = _Histogram(
            "onnx_serve_compute_duration_seconds",
            "Time onnxruntime spent running a request's batch.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_count = Counter(
            "onnx_serve_inference_count",
            "Inferences performed (rows of the batch dimension; 1 for unbatched models).",
            MODEL_LABELS,
            registry=r,
        )
        self.execution_count = Counter(
            "onnx_serve_execution_count",
            "onnxruntime session runs; inference_count / execution_count is the mean batch.",
            MODEL_LABELS,
            registry=r,
        )
        self.batch_size = _Histogram(
            "onnx_serve_batch_size",
            "Rows in each session run.",
            MODEL_LABELS,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "onnx_serve_inflight_requests",
            "Requests being served by a model now.",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "onnx_serve_queue_depth",
            "Requests waiting in a model's batching queue.",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.load_seconds = Gauge(
            "onnx_serve_model_load_duration_seconds",
            "Seconds the last load of a model version took (sessions and warm-up).",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="max",
        )
        self.ready = Gauge(
            "onnx_serve_model_ready",
            "1 while a model version is ready, labelled with the provider it runs on.",
            (*MODEL_LABELS, "provider"),
            registry=r,
            multiprocess_mode="max",
        )
        self.load_failed = Gauge(
            "onnx_serve_model_load_failed",
            "1 while the last load of a model version failed (version '': its config), whether "
            "or not an earlier load of it keeps serving; 0 once it loads or is taken away.",
            MODEL_LABELS,
            registry=r,
            multiprocess_mode="max",
        )
        self.provider_fallback = Gauge(
            "onnx_serve_model_provider_fallback",
            "1 when a model version asked for an accelerator and got a lesser provider.",
            (*MODEL_LABELS, "requested", "actual"),
            registry=r,
            multiprocess_mode="max",
        )

        # Optimised versions (app/optimize): kind is int8, int8-static, fp16, graph or none.
        self.optimization = Gauge(
            "onnx_serve_model_optimization_info",
            "1 while a model version is loaded, labelled with how it was optimised (kind "
            "'none': served as uploaded) and the provider it was optimised for.",
            (*MODEL_LABELS, "kind", "target"),
            registry=r,
            multiprocess_mode="max",
        )

    def request(self, model: str, version: str) -> RequestObservation:
        """Time one request to a known model (``with``); count its success or failure reason."""
        return RequestObservation(self, model, version)

    def series(self, model: str, version: str) -> ModelSeries:
        """The bound series of a known model version (created on first use)."""
        found = self._series.get((model, version))
        if found is None:
            found = self._series[(model, version)] = ModelSeries(self, model, version)
        return found

    def stats_for(self, model: str, version: str) -> ModelStats:
        found = self.stats.get((model, version))
        if found is None:
            found = self.stats[(model, version)] = ModelStats()
        return found

    def executed(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Count one session run over ``rows`` inferences that took ``seconds``."""
        count_execution(self.series(model, version), rows, seconds)

    def model_loaded(
        self, model: str, version: str, provider: str, seconds: float, requested: str | None
    ) -> None:
        self.load_seconds.labels(model, version).set(seconds)
        self.ready.labels(model, version, provider).set(1)
        self.load_failed.labels(model, version).set(0)
        if requested is not None:
            self.provider_fallback.labels(model, version, requested, provider).set(1)

    def model_load_failed(self, model: str, version: str, failed: bool) -> None:
        self.load_failed.labels(model, version).set(1 if failed else 0)

    def model_unloaded(self, model: str, version: str, provider: str) -> None:
        self.ready.labels(model, version, provider).set(0)

    def model_optimization(
        self, model: str, version: str, kind: str, target: str, loaded: bool
    ) -> None:
        """Mark a loaded version's optimisation (``loaded``) or clear it at unload."""
        self.optimization.labels(model, version, kind, target).set(1 if loaded else 0)

    def flush(self) -> None:
        """Move the per-request figures counted since the last flush into their series.

        Call it on the event loop thread, where they are counted (the /metrics route and
        ``flush_periodically`` do).
        """
        for series in list(self._series.values()):
            series.flush()

    def exposition(self) -> bytes:
        """The text exposition, aggregated over worker processes when there are several.

        This process's figures are flushed first; other workers flush theirs every
        ``FLUSH_SECONDS`` (``flush_periodically``), so their share may lag by that much.
        """
        self.flush()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=merged)  # this worker's process only
        merged.register(RuntimeCollector(self.live_sessions))
        return generate_latest(merged)


async def flush_periodically(metrics: Metrics, seconds: float = FLUSH_SECONDS) -> None:
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
