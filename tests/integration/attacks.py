"""Measuring what an attack costs a live server: its memory (RSS) and its liveness latency."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import httpx

from tests.server import RunningServer

MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def rss(server: RunningServer) -> int:
    """The server process's resident memory now, in bytes."""
    assert server.process is not None
    return _status_kib(server.process.pid, "VmRSS") * 1024


def peak_rss(server: RunningServer) -> int:
    """The most resident memory the server process has had since ``reset_peak``, in bytes."""
    assert server.process is not None
    return _status_kib(server.process.pid, "VmHWM") * 1024


def reset_peak(server: RunningServer) -> None:
    """Start a new peak (``peak_rss``) from the memory the server holds now."""
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/clear_refs", "w") as clear:
        clear.write("5")


class LivenessProbe:
    """Asks ``GET /v2/health/live`` over and over while the block runs; ``worst`` is the
    longest answer (seconds), ``answers`` how many came."""

    def __init__(self, server: RunningServer, every: float = 0.02) -> None:
        self.url = server.url + "/v2/health/live"
        self.every = every
        self.worst = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(self.url).status_code
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    status = 0
                self.worst = max(self.worst, time.perf_counter() - started)
                if status == 200:
                    self.answers += 1
                else:
                    self.failures.append(str(status))
                self._stop.wait(self.every)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
