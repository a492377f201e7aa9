"""Answers of the HTTP server by method, route template and status (``/metrics``).

Labels stay bounded: the route is the template a request matched (``/v2/models/{model_name}
/infer``), never its raw path, and ``unmatched`` for a path no route takes; methods outside
the standard ones count as ``OTHER``. Answers are counted into a plain dict on the event loop
and moved into the Prometheus counter at each flush, like the request series.
"""

from __future__ import annotations

from prometheus_client import Counter

#: The route label of a request that no route took.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpResponses:
    """Answers counted since the last flush, then added to ``counter``."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._counts: dict[tuple[str, str, int], int] = {}

    def count(self, method: str, route: str, status: int) -> None:
        key = (method if method in METHODS else "OTHER", route, status)
        self._counts[key] = self._counts.get(key, 0) + 1

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for (method, route, status), count in counts.items():
            self._counter.labels(method, route, str(status)).inc(count)
