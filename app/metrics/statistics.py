"""Triton's per-model statistics (``GET /v2/models/{m}/stats``, gRPC ModelStatistics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
class RequestTotals:
    """Successful and failed requests that came in over one protocol."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """This process's statistics for one model version; requests are kept by protocol."""

    requests: dict[str, RequestTotals] = field(default_factory=dict)
    queue: Duration = field(default_factory=Duration)
    #: Decoding and validating a request's inputs (image decoding and preprocessing too).
    compute_input: Duration = field(default_factory=Duration)
    #: The session run that computed a request's outputs (its batch's run).
    compute_infer: Duration = field(default_factory=Duration)
    #: Encoding a request's outputs into its answer (JSON, binary tensors, labels).
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)

    def totals(self, protocol: str) -> RequestTotals:
        """The request totals of one protocol (created on first use)."""
        found = self.requests.get(protocol)
        if found is None:
            found = self.requests[protocol] = RequestTotals()
        return found

    def _sum(self, pick: str) -> Duration:
        total = Duration()
        for totals in self.requests.values():
            part: Duration = getattr(totals, pick)
            total.count += part.count
            total.ns += part.ns
        return total

    @property
    def success(self) -> Duration:
        """Successful requests over every protocol."""
        return self._sum("success")

    @property
    def fail(self) -> Duration:
        """Failed requests over every protocol."""
        return self._sum("fail")

    def as_dict(self, name: str, version: str) -> dict[str, Any]:
        # Batch statistics are per session run: a run's inputs and outputs are the requests'
        # own (counted above), so only its compute is known by batch size.
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
                "compute_input": self.compute_input.as_dict(),
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": self.compute_output.as_dict(),
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
