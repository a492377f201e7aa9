"""HTTP connections with bounds: head size, slow heads and bodies, and how many are open.

uvicorn's httptools protocol closes a connection only when it has been idle after a
response: a connection that never sends a request, or sends its head or body a byte at a
time, is held for good, and a head of any size is buffered. ``GuardedHttpProtocol`` adds
what a server facing the network needs: a head over ``max_header_bytes`` is answered 431, a
head that has not fully arrived ``header_timeout`` seconds after its connection (or request)
began closes the connection, as does a body that receives nothing for ``body_timeout``
seconds, and connections beyond ``max_connections`` are answered 503 and closed at once.

Each connection checks its own deadlines from one timer; on the hot path a request only
records a few timestamps.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

#: Descriptors kept for everything but client connections (model files, gRPC, logs, pipes).
RESERVED_DESCRIPTORS = 128

# What a connection is doing, for its deadlines.
_IDLE, _HEAD, _BODY = 0, 1, 2


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds every HTTP connection is held to."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 4096

    @property
    def check_every(self) -> float:
        """Seconds between two checks of a connection's deadlines."""
        return max(0.05, min(self.header_timeout, self.body_timeout) / 4)


def _answer(status: int, phrase: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    return b"".join(
        [
            f"HTTP/1.1 {status} {phrase}\r\n".encode(),
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol held to ``ConnectionLimits``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._phase = _HEAD
        self._since = 0.0
        self._head_bytes = 0
        # The last bytes of the previous chunk, where a head's end may begin.
        self._tail = b""
        self._watch: asyncio.TimerHandle | None = None

    # ---- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(
                _answer(
                    503,
                    "Service Unavailable",
                    "too many open connections; retry later",
                    b"retry-after: 1\r\n",
                ),
                "over the connection limit",
            )
            return
        self._since = self.loop.time()
        self._watch = self.loop.call_later(self.limits.check_every, self._check_deadlines)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._phase != _BODY:
            before = self._head_bytes
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes and self._head_too_large(
                before, data
            ):
                return
            self._tail = data[-3:]
        super().data_received(data)

    def _head_too_large(self, before: int, data: bytes) -> bool:
        """Whether the head passes the limit (this chunk took the count past it); if so,
        the connection is answered 431 and closed."""
        # Only the head counts: where it ends in this chunk (its blank line may straddle
        # the previous chunk), if it does.
        carried = self._tail
        end = (carried + data).find(b"\r\n\r\n")
        size = before - len(carried) + end + 4 if end >= 0 else self._head_bytes
        if size <= self.limits.max_header_bytes:
            return False
        self._refuse(
            _answer(
                431,
                "Request Header Fields Too Large",
                f"the request head is over the limit of {self.limits.max_header_bytes} bytes",
            ),
            "head too large",
        )
        return True

    # ---- parser callbacks (each records where the request is) ------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase == _IDLE:
            # A request on a kept-alive connection: its head has its own deadline.
            self._phase = _HEAD
            self._since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._head_bytes = 0
        self._tail = b""
        self._since = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._since = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    # ---- deadlines -----------------------------------------------------------------------

    def _check_deadlines(self) -> None:
        self._watch = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        phase = self._phase
        if phase == _HEAD and now - self._since > self.limits.header_timeout:
            log.debug("closing %s: no complete request head in time", self.client)
            self.transport.close()
            return
        if phase == _BODY:
            if self.flow.read_paused:
                # The app has not read what arrived yet: the client is not the slow one.
                self._since = now
            elif now - self._since > self.limits.body_timeout:
                log.debug("closing %s: the request body stopped arriving", self.client)
                self.transport.close()
                return
        self._watch = self.loop.call_later(self.limits.check_every, self._check_deadlines)

    def _refuse(self, answer: bytes, why: str) -> None:
        log.debug("closing %s: %s", self.client, why)
        self._phase = _IDLE
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one where allowed; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_cap(wanted: int, open_files: int) -> int:
    """The connection limit that leaves ``RESERVED_DESCRIPTORS`` of ``open_files`` free."""
    if open_files == resource.RLIM_INFINITY:
        return wanted
    fits = max(1, open_files - RESERVED_DESCRIPTORS)
    if wanted > fits:
        log.warning(
            "max_connections %d does not fit the open-file limit %d: serving at most %d",
            wanted, open_files, fits,
        )  # fmt: skip
        return fits
    return wanted
