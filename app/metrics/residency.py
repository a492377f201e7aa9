"""Series of model residency: loads by reason, evictions, memory per version and budgets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

MODEL_LABELS = ("model", "version")


class ResidencyMetrics:
    """Loads, evictions and memory, registered on the service's ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.loads = Counter(
            "onnx_serve_model_loads",
            "Model version loads that succeeded, by reason: startup, demand (a cold start: a "
            "request found it unloaded), reload (the load API or a change on disk), upload.",
            (*MODEL_LABELS, "reason"),
            registry=registry,
        )
        self.evictions = Counter(
            "onnx_serve_model_evictions",
            "Model versions unloaded to make room for another under the memory budget.",
            MODEL_LABELS,
            registry=registry,
        )
        self.memory = Gauge(
            "onnx_serve_model_memory_bytes",
            "Memory a loaded model version took at load (growth of resident memory, or of "
            "device memory on a GPU), by device: host, gpu0, gpu1...; 0 once unloaded.",
            (*MODEL_LABELS, "device"),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.budget = Gauge(
            "onnx_serve_memory_budget_bytes",
            "The memory budget of loaded model versions, by device (absent without one).",
            ("device",),
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.accounted = Gauge(
            "onnx_serve_memory_accounted_bytes",
            "Memory of the loaded model versions counted against the budget, by device.",
            ("device",),
            registry=registry,
            multiprocess_mode="livesum",
        )

    def loaded(self, model: str, version: str, reason: str, amounts: dict[str, int]) -> None:
        self.loads.labels(model, version, reason).inc()
        for device, size in amounts.items():
            self.memory.labels(model, version, device).set(size)

    def unloaded(self, model: str, version: str, devices: list[str]) -> None:
        for device in devices:
            self.memory.labels(model, version, device).set(0)

    def evicted(self, model: str, version: str) -> None:
        self.evictions.labels(model, version).inc()
