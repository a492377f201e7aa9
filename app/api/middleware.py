"""Request middleware: request ids, the access log, in-flight counting and the drain gate."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access_log import AccessLog
from app.api.connection_share import ConnectionShare
from app.errors import ServingError, ShuttingDown
from app.inference.context import REST
from app.inference.lifecycle import ServerState
from app.inference.request_ids import request_id as new_request_id
from app.log import current_request_id, current_trace_id
from app.metrics.http import UNMATCHED, HttpResponses
from app.protocol.timeouts import TIMEOUT_HEADER, timeout_header
from app.tracing import RequestSpan, Tracing, trace_headers

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
#: A request's own queue timeout in microseconds (like v2 ``parameters.timeout``; 0: none).
TIMEOUT_KEY = TIMEOUT_HEADER.lower().encode("latin-1")
# Paths served while draining: probes (KServe's liveness is "/") must keep answering and
# Prometheus keeps scraping.
DRAIN_EXEMPT = frozenset({"/", "/v2/health/live", "/v2/health/ready", "/metrics"})
MAX_LOGGED_PATH = 200
# The access log's status for a request whose client left before any answer (as nginx does).
CLIENT_CLOSED = 499


def _error_messages(status: int, message: str) -> tuple[Message, Message]:
    body = orjson.dumps({"error": message})
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class RequestContextMiddleware:
    """Pure ASGI middleware around every HTTP request.

    Gives the request an id (the client's ``X-Request-ID`` if sane, else a new one), echoes
    it on the response, makes it the log context, writes one access log line, counts the
    request as in flight, and while ``state.shutting_down`` is set answers new requests with
    503 (responses then also say ``Connection: close``). It also reads the request's own queue
    timeout from ``X-Request-Timeout-Us`` (400 when malformed); the id and the timeout go into
    the scope's ``state`` for the request's context. An exception that escapes the app is
    logged with the id and answered with a 500 here, so that even that response carries it.
    The access line goes to ``access_log`` (None: no access log). With several workers,
    ``share`` counts the connections and picks those asked to reconnect elsewhere.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        state: ServerState,
        responses: HttpResponses | None = None,
        tracing: Tracing | None = None,
        access_log: AccessLog | None = None,
        share: ConnectionShare | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.inflight = state.inflight
        #: Counts answers by route template and status (``/metrics``).
        self.responses = responses
        #: Traces requests when tracing is on (see app/tracing.py).
        self.tracing = tracing
        self.access_log = access_log
        self.share = share

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Both headers this reads, in one pass over the request's headers.
        given_id = timeout = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if given_id is None:
                    given_id = value
            elif name == TIMEOUT_KEY and timeout is None:
                timeout = value
        request_id = new_request_id(given_id)
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        request_state = scope.setdefault("state", {})
        request_state["request_id"] = request_id
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        counted = scope["path"] not in DRAIN_EXEMPT
        status = size = 0
        state = self.state
        span = trace_id = None
        if self.tracing is not None:
            span = request_span(self.tracing, scope, request_id)
            request_state["trace"] = span
            trace_id = span.trace_id()
            trace_token = current_trace_id.set(trace_id)
        share = self.share
        client = scope.get("client")
        if share is not None:
            share.enter(client)

        async def send_with_id(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), id_header]
                if span is not None:
                    headers.append((b"traceparent", span.traceparent().encode()))
                if state.shutting_down or (
                    share is not None and share.to_close > 0 and share.should_close(client)
                ):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
                status = message["status"]
            else:
                size += len(message.get("body", b""))
            await send(message)

        try:
            if counted and state.shutting_down:
                error = ShuttingDown("the server is shutting down; retry on another instance")
                for message in _error_messages(error.status, error.message):
                    await send_with_id(message)
                return
            try:
                request_state["timeout_us"] = timeout_header(timeout)
            except ServingError as exc:
                for message in _error_messages(exc.status, exc.message):
                    await send_with_id(message)
                return
            if counted:
                self.inflight.enter()
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if counted:
                    self.inflight.leave()
        except ClientDisconnect:
            # The client left before the app read its body: no answer can reach it.
            log.info("client disconnected during %s %s", scope["method"], _path(scope))
            if status == 0:
                status = CLIENT_CLOSED
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], _path(scope))
            if status == 0:
                for message in _error_messages(500, "internal server error"):
                    await send_with_id(message)
        finally:
            if share is not None:
                share.leave(client)
            if self.access_log is not None:
                self.access_log.record(
                    request_id, REST, scope["method"], scope.get("raw_path") or scope["path"],
                    status, None, size, time.perf_counter() - started,
                    client[0] if client else "-", trace_id,
                )  # fmt: skip
            if self.responses is not None or span is not None:
                route = route_label(scope)
                if self.responses is not None:
                    self.responses.count(scope["method"], route, status)
                if span is not None:
                    span.finish(f"{scope['method']} {route}", status)
                    current_trace_id.reset(trace_token)
            current_request_id.reset(token)


def route_label(scope: Scope) -> str:
    """The template of the route that took the request (its router set it in the scope)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


def request_span(tracing: Tracing, scope: Scope, request_id: str) -> RequestSpan:
    """The server span of an HTTP request, child of its ``traceparent`` if it has one."""
    attributes = {
        "http.request.method": scope["method"],
        "url.path": _path(scope),
        "onnx_serve.request_id": request_id,
    }
    return tracing.start(scope["method"], trace_headers(scope["headers"]), attributes)


def _path(scope: Scope) -> str:
    # The raw path keeps percent-escapes, so a client cannot put a newline into the log.
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1") if raw else scope["path"]
    return path[:MAX_LOGGED_PATH]
