"""Every series the service exports, registered on an injected ``CollectorRegistry``."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from app.metrics.collectors import RuntimeCollector, exposition
from app.metrics.http import HttpResponses
from app.metrics.residency import ResidencyMetrics
from app.metrics.series import (
    BATCH_BUCKETS,
    LATENCY_BUCKETS,
    BulkHistogram,
    ModelSeries,
    RequestObservation,
    count_execution,
)
from app.metrics.statistics import ModelStats

MODEL_LABELS = ("model", "version")
#: Request series also carry the front end a request came in over: "rest" or "grpc".
REQUEST_LABELS = (*MODEL_LABELS, "protocol")


class Metrics:
    """Every series the service exports, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stats: dict[tuple[str, str], ModelStats] = {}
        self._series: dict[tuple[str, str], ModelSeries] = {}
        ProcessCollector(registry=self.registry)
        # Sessions are held weakly: one that stays counted after its unload has leaked.
        self.live_sessions: weakref.WeakSet[object] = weakref.WeakSet()
        #: Requests the process serves now (the app points this at its server state).
        self.requests_in_flight: Callable[[], int] = lambda: 0
        #: The event loop's lateness (the app points this at its loop watch).
        self.loop_lag: Callable[[], float] = lambda: 0.0
        self._runtime = RuntimeCollector(
            self.live_sessions, lambda: self.requests_in_flight(), lambda: self.loop_lag()
        )
        self.registry.register(self._runtime)
        r = self.registry
        self.request_success = Counter(
            "onnx_serve_request_success",
            "Inference requests that succeeded, by the protocol they came in over.",
            REQUEST_LABELS,
            registry=r,
        )
        self.request_failure = Counter(
            "onnx_serve_request_failure",
            "Inference requests that failed, by protocol and reason.",
            (*REQUEST_LABELS, "reason"),
            registry=r,
        )
        self.request_seconds = BulkHistogram(
            "onnx_serve_request_duration_seconds",
            "Time from request arrival at the model to its answer, by protocol.",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = BulkHistogram(
            "onnx_serve_queue_duration_seconds",
            "Time a request waited for a session or a batch.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = BulkHistogram(
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
        self.batch_size = BulkHistogram(
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

        self.http_responses = HttpResponses(
            Counter(
                "onnx_serve_http_responses",
                "HTTP answers by method, route template ('unmatched': no route) and status.",
                ("method", "route", "status"),
                registry=r,
            )
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

        #: Loads by reason, evictions, memory per version and the budgets (app/registry).
        self.residency = ResidencyMetrics(r)

    def request(self, model: str, version: str, protocol: str) -> RequestObservation:
        """Time one request to a known model (``with``); count its success or failure reason."""
        return RequestObservation(self, model, version, protocol)

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
        self.http_responses.flush()

    def exposition(self) -> bytes:
        """The text exposition, aggregated over worker processes when there are several.

        This process's figures are flushed first; other workers flush theirs every
        ``FLUSH_SECONDS`` (``flush_periodically``), so their share may lag by that much.
        """
        self.flush()
        return exposition(self.registry, self._runtime)
