"""Metrics counted as plain numbers, flushed into Prometheus series: exact, per protocol.

``BulkHistogram.add`` uses prometheus-client's bucket and sum values (it has no public bulk
update); pyproject.toml pins the versions it was written for, and these tests fail on a
version whose internals differ.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.errors import QueueFull
from app.metrics import Metrics
from app.metrics.series import LATENCY_BUCKETS, BulkHistogram, Tally

KEPT = ("_bucket", "_count", "_sum")


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def test_bulk_histogram_adds_counts_and_sum_as_observations_would() -> None:
    registry = CollectorRegistry()
    bulk = BulkHistogram("bulk_seconds", "bulk", buckets=LATENCY_BUCKETS, registry=registry)
    tally = Tally(LATENCY_BUCKETS)
    values = [0.00005, 0.0001, 0.0003, 0.02, 0.02, 7.0, 99.0]
    for value in values:
        tally.observe(value)
    counts = tally.take()
    assert counts is not None and tally.take() is None
    bulk.add(counts, sum(values))

    reference_registry = CollectorRegistry()
    reference = BulkHistogram(
        "bulk_seconds", "bulk", buckets=LATENCY_BUCKETS, registry=reference_registry
    )
    for value in values:
        reference.observe(value)

    def values(source: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        (family,) = source.collect()
        return [(s.name, s.labels, s.value) for s in family.samples if s.name.endswith(KEPT)]

    assert values(registry) == values(reference_registry)
    assert len(values(registry)) == len(LATENCY_BUCKETS) + 1 + 2


def test_requests_are_counted_by_protocol_and_statistics_sum_them() -> None:
    metrics = Metrics()
    for protocol, outcome in (("rest", None), ("rest", None), ("grpc", None), ("grpc", "full")):
        try:
            with metrics.request("m", "1", protocol) as observation:
                observation.completed(0.0005, 0.001, 0.002, 0.0003)
                if outcome:
                    raise QueueFull("full")
        except QueueFull:
            pass
    metrics.executed("m", "1", 3, 0.002)
    s = samples(metrics)
    rest = frozenset({"model": "m", "version": "1", "protocol": "rest"}.items())
    grpc = frozenset({"model": "m", "version": "1", "protocol": "grpc"}.items())
    assert s[("onnx_serve_request_success_total", rest)] == 2
    assert s[("onnx_serve_request_success_total", grpc)] == 1
    failed = frozenset({*grpc, ("reason", "queue_full")})
    assert s[("onnx_serve_request_failure_total", failed)] == 1
    assert s[("onnx_serve_request_duration_seconds_count", rest)] == 2
    assert s[("onnx_serve_request_duration_seconds_count", grpc)] == 2
    model = frozenset({"model": "m", "version": "1"}.items())
    assert s[("onnx_serve_queue_duration_seconds_count", model)] == 4
    assert s[("onnx_serve_inference_count_total", model)] == 3
    # Triton's statistics are the model version's, over every protocol.
    stats = metrics.stats_for("m", "1").as_dict("m", "1")
    assert stats["inference_stats"]["success"]["count"] == 3
    assert stats["inference_stats"]["fail"]["count"] == 1
    # perf_analyzer refuses statistics whose three compute counts differ.
    phases = [
        stats["inference_stats"][k] for k in ("compute_input", "compute_infer", "compute_output")
    ]
    assert [p["count"] for p in phases] == [4, 4, 4]
    assert [p["ns"] for p in phases] == [2_000_000, 8_000_000, 1_200_000]
    # A second flush moves nothing twice.
    assert samples(metrics)[("onnx_serve_request_success_total", rest)] == 2


def test_requests_in_flight_are_read_at_scrape() -> None:
    metrics = Metrics()
    metrics.requests_in_flight = lambda: 7
    assert samples(metrics)[("onnx_serve_requests_in_flight", frozenset())] == 7
