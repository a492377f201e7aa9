"""Prometheus series over an injected registry, used through one context manager a request.

The hot path counts into plain numbers (the per-version ``ModelStats`` that Triton's
statistics serve, and bucket tallies); ``flush`` moves what changed since the last flush into
the Prometheus series, at every scrape of this process and every ``FLUSH_SECONDS`` when worker
processes share their series. Locked Prometheus updates, nine a request, cost more than a small
model's run. Everything here runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from types import TracebackType
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from app.errors import ClientDisconnected, ServingError
from app.metrics.statistics import Duration, RequestTotals

if TYPE_CHECKING:
    from app.metrics.metrics import Metrics

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class BulkHistogram(Histogram):
    """A Histogram that also takes observations counted elsewhere (``Tally``), in bulk.

    prometheus-client has no public bulk update; this uses its bucket and sum values, which
    pyproject.toml pins the version range for and tests/metrics/test_series.py checks.
    """

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


class ProtocolSeries:
    """One model version's requests over one protocol: their totals and latency tally."""

    __slots__ = ("name", "totals", "request_seconds", "_success", "_histogram", "_flushed")

    def __init__(
        self, metrics: Metrics, totals: RequestTotals, labels: tuple[str, str, str]
    ) -> None:
        self.name = labels[2]
        self.totals = totals
        self.request_seconds = Tally(LATENCY_BUCKETS)
        self._success = metrics.request_success.labels(*labels)
        self._histogram = metrics.request_seconds.labels(*labels)
        # Successes and nanoseconds of every request at the last flush.
        self._flushed = (0, 0)

    def flush(self) -> None:
        totals = self.totals
        now = (totals.success.count, totals.success.ns + totals.fail.ns)
        successes, nanoseconds = (a - b for a, b in zip(now, self._flushed, strict=True))
        self._flushed = now
        if successes:
            self._success.inc(successes)
        counts = self.request_seconds.take()
        if counts is not None:
            self._histogram.add(counts, nanoseconds / 1e9)


class ModelSeries:
    """One model version's per-request figures (see the module's docstring)."""

    __slots__ = (
        "model",
        "version",
        "stats",
        "inflight",
        "queue_seconds",
        "compute_seconds",
        "batch_size",
        "_metrics",
        "_protocols",
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
        self.queue_seconds = Tally(LATENCY_BUCKETS)
        self.compute_seconds = Tally(LATENCY_BUCKETS)
        self.batch_size = Tally(BATCH_BUCKETS)
        self._metrics = metrics
        self._protocols: dict[str, ProtocolSeries] = {}
        self._inflight = metrics.inflight.labels(model, version)
        # In the order of ``_totals``.
        self._counters: tuple[Counter, ...] = (
            metrics.execution_count.labels(model, version),
            metrics.inference_count.labels(model, version),
        )
        self._histograms: tuple[BulkHistogram, ...] = (
            metrics.batch_size.labels(model, version),
            metrics.queue_seconds.labels(model, version),
            metrics.compute_seconds.labels(model, version),
        )
        self._flushed = (0, 0, 0, 0)

    def protocol(self, protocol: str) -> ProtocolSeries:
        """The series of this version's requests over ``protocol`` (created on first use)."""
        found = self._protocols.get(protocol)
        if found is None:
            found = self._protocols[protocol] = ProtocolSeries(
                self._metrics, self.stats.totals(protocol), (self.model, self.version, protocol)
            )
        return found

    def _totals(self) -> tuple[int, int, int, int]:
        """Session runs, inferences (the batch sizes' sum) and the nanoseconds of queue waits
        and compute, counted since the series began."""
        stats = self.stats
        return (
            stats.execution_count,
            stats.inference_count,
            stats.queue.ns,
            stats.compute_infer.ns,
        )

    def flush(self) -> None:
        """Move what was counted since the last flush into the Prometheus series."""
        self._inflight.set(self.inflight)
        for series in self._protocols.values():
            series.flush()
        totals = self._totals()
        changes = [now - before for now, before in zip(totals, self._flushed, strict=True)]
        self._flushed = totals
        for counter, change in zip(self._counters, changes, strict=False):
            if change:
                counter.inc(change)
        rows, *nanoseconds = changes[1:]
        sums = (rows, *(ns / 1e9 for ns in nanoseconds))
        tallies = (self.batch_size, self.queue_seconds, self.compute_seconds)
        for histogram, tally, total in zip(self._histograms, tallies, sums, strict=True):
            counts = tally.take()
            if counts is not None:
                histogram.add(counts, total)


class RequestObservation:
    """One request to a known model: a context manager that times it and counts its success
    or failure reason, and what it reports while it runs (its queue and compute time)."""

    __slots__ = ("_metrics", "_series", "_protocol", "_start")

    def __init__(self, metrics: Metrics, model: str, version: str, protocol: str) -> None:
        self._metrics = metrics
        self._series = series = metrics.series(model, version)
        self._protocol = series.protocol(protocol)
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
        protocol = self._protocol
        elapsed = time.perf_counter() - self._start
        if exc is None:
            protocol.totals.success.add(elapsed)
        else:
            if isinstance(exc, ServingError):
                reason = exc.reason
            elif isinstance(exc, asyncio.CancelledError):
                # The front end cancelled the request because its client went away (a gRPC
                # cancellation or deadline): no fault of the server's.
                reason = ClientDisconnected.reason
            else:
                reason = "internal"
            failures = self._metrics.request_failure
            failures.labels(series.model, series.version, protocol.name, reason).inc()
            protocol.totals.fail.add(elapsed)
        series.inflight -= 1
        protocol.request_seconds.observe(elapsed)

    def completed(self, prepared: float, queued: float, computed: float, encoded: float) -> None:
        """Report the phases of a request that was answered: decoding and validating its
        inputs, its wait for a session or batch, the run that computed it and the encoding
        of its answer (the run itself is counted by the runner that made it, with
        ``Metrics.executed``). Counted together, so that Triton's compute_input,
        compute_infer and compute_output counts stay equal, as perf_analyzer checks."""
        series = self._series
        stats = series.stats
        series.queue_seconds.observe(queued)
        stats.queue.add(queued)
        series.compute_seconds.observe(computed)
        stats.compute_infer.add(computed)
        stats.compute_input.add(prepared)
        stats.compute_output.add(encoded)


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
