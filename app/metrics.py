"""Prometheus metrics over an injected registry, used through one context manager a request."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


class RequestObservation:
    """What one request reports while it runs: its queue and compute time and batch."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._stats = metrics.stats_for(model, version)

    def queued(self, seconds: float) -> None:
        self._metrics.queue_seconds.labels(*self._labels).observe(seconds)
        self._stats.queue.add(seconds)

    def computed(self, seconds: float) -> None:
        self._metrics.compute_seconds.labels(*self._labels).observe(seconds)
        self._stats.compute_infer.add(seconds)


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
        self.request_seconds = Histogram(
            "onnx_serve_request_duration_seconds",
            "Time from request arrival at the model to its answer.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "onnx_serve_queue_duration_seconds",
            "Time a request waited for a session or a batch.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
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
        self.batch_size = Histogram(
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
        self.provider_fallback = Gauge(
            "onnx_serve_model_provider_fallback",
            "1 when a model version asked for an accelerator and got a lesser provider.",
            (*MODEL_LABELS, "requested", "actual"),
            registry=r,
            multiprocess_mode="max",
        )

    @contextmanager
    def request(self, model: str, version: str) -> Iterator[RequestObservation]:
        """Time one request to a known model; count its success or its failure reason."""
        inflight = self.inflight.labels(model, version)
        stats = self.stats_for(model, version)
        inflight.inc()
        start = time.perf_counter()
        try:
            yield RequestObservation(self, model, version)
        except ServingError as exc:
            self.request_failure.labels(model, version, exc.reason).inc()
            stats.fail.add(time.perf_counter() - start)
            raise
        except BaseException:
            self.request_failure.labels(model, version, "internal").inc()
            stats.fail.add(time.perf_counter() - start)
            raise
        else:
            self.request_success.labels(model, version).inc()
            stats.success.add(time.perf_counter() - start)
        finally:
            inflight.dec()
            self.request_seconds.labels(model, version).observe(time.perf_counter() - start)

    def stats_for(self, model: str, version: str) -> ModelStats:
        found = self.stats.get((model, version))
        if found is None:
            found = self.stats[(model, version)] = ModelStats()
        return found

    def executed(self, model: str, version: str, rows: int, seconds: float) -> None:
        """Count one session run over ``rows`` inferences that took ``seconds``."""
        self.execution_count.labels(model, version).inc()
        self.inference_count.labels(model, version).inc(rows)
        self.batch_size.labels(model, version).observe(rows)
        stats = self.stats_for(model, version)
        stats.execution_count += 1
        stats.inference_count += rows
        stats.last_inference_ms = int(time.time() * 1000)
        stats.batches.setdefault(rows, Duration()).add(seconds)

    def model_loaded(
        self, model: str, version: str, provider: str, seconds: float, requested: str | None
    ) -> None:
        self.load_seconds.labels(model, version).set(seconds)
        self.ready.labels(model, version, provider).set(1)
        if requested is not None:
            self.provider_fallback.labels(model, version, requested, provider).set(1)

    def model_unloaded(self, model: str, version: str, provider: str) -> None:
        self.ready.labels(model, version, provider).set(0)

    def exposition(self) -> bytes:
        """The text exposition, aggregated over worker processes when there are several."""
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=merged)  # this worker's process only
        merged.register(RuntimeCollector(self.live_sessions))
        return generate_latest(merged)
