"""Why an optimisation did not produce a version: refused on its figures, or failed."""

from __future__ import annotations

from typing import Any

from app.errors import InvalidModel


class OptimizationFailed(InvalidModel):
    """The optimisation could not be made (a tool failed, time ran out, no accelerator)."""

    reason = "optimization_failed"


class OptimizationRefused(OptimizationFailed):
    """The optimised model differs from the original by more than the limits allow."""

    reason = "optimization_refused"

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        #: The figures behind the refusal (``optimization.json``'s shape).
        self.report = report or {}
