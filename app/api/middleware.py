"""Request middleware: request ids, the access log, in-flight counting and the drain gate."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import secrets
import time
from typing import Any

import orjson
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BadRequest, ServingError, ShuttingDown
from app.inference.service import requested_timeout_us
from app.log import ACCESS_LOGGER, current_request_id

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_HEADER = b"x-request-id"
#: A request's own queue timeout in microseconds (like v2 ``parameters.timeout``; 0: none).
TIMEOUT_HEADER = b"x-request-timeout-us"
TIMEOUT_VALUE = re.compile(rb"[0-9]{1,18}")
# An id from the client is kept when it is 1-128 of these characters: enough for UUIDs,
# ULIDs, base64 and trace headers, and nothing that could split or forge a log line.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:;,=+/@-]{1,128}")
# Paths served while draining: probes must keep answering and Prometheus keeps scraping.
DRAIN_EXEMPT = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
MAX_LOGGED_PATH = 200
# The access log's status for a request whose client left before any answer (as nginx does).
CLIENT_CLOSED = 499


class RequestIds:
    """Unique request ids: a random prefix per process, then a counter (32 hex digits).

    As unique as random ids across processes and restarts, at a fraction of their cost.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new prefix and counter (a forked child must not repeat its parent's ids)."""
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = RequestIds()
os.register_at_fork(after_in_child=_request_ids.reset)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new unique id."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return _request_id(value)
    return _request_id(None)


def _request_id(given: bytes | None) -> str:
    if given is not None and SANE_REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return _request_ids.new()


def _timeout(value: bytes | None) -> int | None:
    if value is None:
        return None
    if TIMEOUT_VALUE.fullmatch(value.strip()) is None:
        raise BadRequest("X-Request-Timeout-Us must be a non-negative integer of microseconds")
    return int(value)


class InFlightRequests:
    """How many requests are being served; a drain waits for the count to reach zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds passed first."""
        if self.count == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


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
    timeout from ``X-Request-Timeout-Us`` (400 when malformed) for the inference service. An
    exception that escapes the app is logged with the id and answered with a 500 here, so that
    even that response carries it.
    """

    def __init__(self, app: ASGIApp, *, state: State, inflight: InFlightRequests) -> None:
        self.app = app
        self.state = state
        # Read twice a request: the state's own dict spares its attribute fallback.
        self._state_values: dict[str, Any] = state._state
        self.inflight = inflight

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
            elif name == TIMEOUT_HEADER and timeout is None:
                timeout = value
        request_id = _request_id(given_id)
        id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        scope.setdefault("state", {})["request_id"] = request_id
        token = current_request_id.set(request_id)
        started = time.perf_counter()
        counted = scope["path"] not in DRAIN_EXEMPT
        status = size = 0
        state = self._state_values

        async def send_with_id(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), id_header]
                if state["shutting_down"]:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
                status = message["status"]
            else:
                size += len(message.get("body", b""))
            await send(message)

        timeout_token = None
        try:
            if counted and state["shutting_down"]:
                error = ShuttingDown("the server is shutting down; retry on another instance")
                for message in _error_messages(error.status, error.message):
                    await send_with_id(message)
                return
            try:
                timeout_token = requested_timeout_us.set(_timeout(timeout))
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
            _log_access(scope, status, size, started)
            if timeout_token is not None:
                requested_timeout_us.reset(timeout_token)
            current_request_id.reset(token)


def _path(scope: Scope) -> str:
    # The raw path keeps percent-escapes, so a client cannot put a newline into the log.
    raw = scope.get("raw_path")
    path: str = raw.decode("latin-1") if raw else scope["path"]
    return path[:MAX_LOGGED_PATH]


def _log_access(scope: Scope, status: int, size: int, started: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    client = scope.get("client")
    host = client[0] if client else "-"
    path = _path(scope)
    method = scope["method"]
    access_log.info(
        '%s "%s %s" %d %dB %.1fms',
        host, method, path, status, size, duration_ms,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "bytes": size,
            "client": host,
        },
    )  # fmt: skip
