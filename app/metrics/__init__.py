"""Metrics: Prometheus series (``metrics``, ``series``), Triton's statistics
(``statistics``) and process collectors with the exposition (``collectors``)."""

from app.metrics.collectors import FLUSH_SECONDS, flush_periodically, multiprocess_dir
from app.metrics.metrics import Metrics
from app.metrics.series import RequestObservation

__all__ = [
    "FLUSH_SECONDS",
    "Metrics",
    "RequestObservation",
    "flush_periodically",
    "multiprocess_dir",
]
