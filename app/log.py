"""Log setup: text or JSON lines on stderr, each stamped with the id of its request."""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

import orjson

#: The logger named in access log lines (written by ``app.access_log``, not through logging).
ACCESS_LOGGER = "onnx_serve.access"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# The id of the request being served by the current task (and the threads it hands work to
# through ``asyncio.to_thread``, which copies the context), for log lines only: the serving
# layers get the id in the request's context, never from here. A context variable must live
# at module level; it holds no state between requests.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request_id", default=None
)
#: The trace id of that request, when tracing is on (app/tracing.py); for log lines too.
current_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_trace_id", default=None
)


class RequestIdFilter(logging.Filter):
    """Give every record a ``request_id`` attribute: its request's id, or "-" outside one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get() or "-"
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id (and trace id when
    tracing is on)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            doc["trace_id"] = trace_id
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Send every logger (uvicorn's included) to one stderr handler in ``log_format``.

    Safe to call again (each worker process calls it): the root handlers are replaced.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # The front ends write the access log (app/access_log.py); uvicorn's would lack the ids.
    logging.getLogger("uvicorn.access").disabled = True
