"""The access log: one line a request, formatted and written in batches.

Sent through ``logging`` one record at a time, the access log cost a small model about a
quarter of its throughput (a record, a formatter and a write(2) for every request). Here a
request only appends a tuple of its facts to a queue; every ``FLUSH_SECONDS``, when the
queue holds ``MAX_PENDING`` lines, and when the server stops, the queue becomes the lines
the log formatters of ``app.log`` would write (text or JSON), written in chunks of at most
``PIPE_BUF`` bytes, one write(2) each: worker processes sharing one pipe never cut into
each other's lines.

The writing happens on the event loop, between requests, as the ``logging`` handler's did.
A thread of its own cost more than it saved on a busy machine: every hand-over of the
interpreter lock between it and the loop waited for the scheduler (0.93x and 0.67x the
throughput of a server without access log in two runs, against 0.98x and 0.96x on the loop,
in alternating windows while other jobs used half of the machine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import orjson

from app.log import ACCESS_LOGGER

log = logging.getLogger(__name__)

#: Longest a line waits before it is written.
FLUSH_SECONDS = 0.1
#: Most lines queued: a full queue is written at once.
MAX_PENDING = 4096
#: Most bytes one write(2) carries: writes of up to this size into a pipe are atomic.
CHUNK_BYTES = select.PIPE_BUF
#: Longest path written (the rest is cut), as the log lines of ``app.api.middleware``.
MAX_PATH = 200

# The lines of app.log's formatters (TEXT_FORMAT, JsonFormatter) for the access logger.
MESSAGE_HTTP = '%s "%s %s" %d %dB %.1fms'
MESSAGE_GRPC = '%s "%s %s" %s %.1fms'
TEXT_HTTP = f"%s,%03d INFO {ACCESS_LOGGER} [%s] {MESSAGE_HTTP}\n"
TEXT_GRPC = f"%s,%03d INFO {ACCESS_LOGGER} [%s] {MESSAGE_GRPC}\n"
JSON_TIME = "%s.%03d+00:00"

# One request: when it ended (time.time()), id, protocol, method, path (str, or the raw bytes
# of an HTTP path: decoded when written), status number, status text (gRPC's code name; None
# over HTTP), bytes sent (None for gRPC), seconds taken, client address (or gRPC peer), trace
# id (None when the request is not traced).
Entry = tuple[
    float, str, str, str, str | bytes, int, str | None, int | None, float, str, str | None
]


class AccessLog:
    """Collects the access lines of one process and writes them in batches."""

    def __init__(
        self, log_format: Literal["text", "json"], write: Callable[[bytes], object] | None = None
    ) -> None:
        """``write`` takes a chunk of lines and writes all of it (default: to stderr)."""
        self.log_format = log_format
        self._write_chunk = write
        self._pending: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._local = self._utc = ""

    # ---- on the request path ---------------------------------------------------------------

    def record(
        self,
        request_id: str,
        protocol: str,
        method: str,
        path: str | bytes,
        status: int,
        status_text: str | None,
        size: int | None,
        seconds: float,
        client: str,
        trace_id: str | None = None,
    ) -> None:
        """Queue one request's line (a few hundred nanoseconds; formatting happens later)."""
        pending = self._pending
        pending.append(
            (time.time(), request_id, protocol, method, path, status, status_text, size, seconds,
             client, trace_id)
        )  # fmt: skip
        if len(pending) >= MAX_PENDING:
            self.flush()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Write the queued lines every ``FLUSH_SECONDS`` from the running event loop."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._tick)

    def close(self) -> None:
        """Write what is queued and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write every queued line now."""
        if not self._pending:
            return
        entries, self._pending = self._pending, []
        json = self.log_format == "json"
        self._write(self._json_lines(entries) if json else self._text_lines(entries))

    def _tick(self) -> None:
        self.flush()
        self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._tick)

    # ---- writing ---------------------------------------------------------------------------

    def _write(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if size + len(line) > CHUNK_BYTES and chunk:
                self._send(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._send(b"".join(chunk))

    def _send(self, data: bytes) -> None:
        if self._write_chunk is None:
            self._write_chunk = stderr_writer()
        try:
            self._write_chunk(data)
        except (OSError, ValueError):
            # A closed or broken output: these lines are lost, the server goes on.
            pass

    # Formatting is most of what the access log costs: one %-format a line, and the time
    # formatted once a second.

    def _text_lines(self, entries: list[Entry]) -> list[bytes]:
        lines = []
        for entry in entries:
            created, request_id, _, method, path, status, text, size, seconds, client, _ = entry
            second = int(created)
            if second != self._second:
                self._set_second(second)
            if path.__class__ is bytes:
                path = path.decode("latin-1")
            ms = int((created - second) * 1000)
            if text is None:
                line = TEXT_HTTP % (
                    self._local, ms, request_id, client, method, path[:MAX_PATH], status, size,
                    seconds * 1000,
                )  # fmt: skip
            else:
                line = TEXT_GRPC % (
                    self._local, ms, request_id, client, method, path, text, seconds * 1000
                )  # fmt: skip
            lines.append(line.encode("utf-8", "replace"))
        return lines

    def _json_lines(self, entries: list[Entry]) -> list[bytes]:
        lines = []
        for entry in entries:
            (created, request_id, protocol, method, path, status, text, size, seconds, client,
             trace_id) = entry  # fmt: skip
            second = int(created)
            if second != self._second:
                self._set_second(second)
            if path.__class__ is bytes:
                path = path.decode("latin-1")
            path = path[:MAX_PATH]
            if text is None:
                message = MESSAGE_HTTP % (client, method, path, status, size, seconds * 1000)
            else:
                message = MESSAGE_GRPC % (client, method, path, text, seconds * 1000)
            doc = {
                "time": JSON_TIME % (self._utc, int((created - second) * 1000)),
                "level": "INFO",
                "logger": ACCESS_LOGGER,
                "message": message,
                "request_id": request_id,
                "trace_id": trace_id,
                "protocol": protocol,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "bytes": size,
                "client": client,
            }
            if trace_id is None:
                del doc["trace_id"]
            if size is None:
                del doc["bytes"]
            lines.append(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE))
        return lines

    def _set_second(self, second: int) -> None:
        self._second = second
        # logging's default time (local, milliseconds after a comma) and the JSON lines' (UTC).
        self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._utc = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def stderr_writer() -> Callable[[bytes], None]:
    """Writes straight to stderr's file descriptor: one write(2) a chunk, which the buffer of
    ``sys.stderr`` could split."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        stream = sys.stderr

        def write_text(data: bytes) -> None:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()

        return write_text

    def write(data: bytes) -> None:
        while data:
            data = data[os.write(fd, data) :]

    return write


def access_log_for(
    level: str, log_format: Literal["text", "json"], enabled: bool
) -> AccessLog | None:
    """The process's access log, or None when it is off (``access_log`` false, or a log
    level above info)."""
    if not enabled or logging.getLevelName(level.upper()) > logging.INFO:
        return None
    return AccessLog(log_format)
