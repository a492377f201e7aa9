"""The processes under test (the server, the bare ASGI app) and who used the CPU meanwhile."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
# The server's uvicorn flags (app/cli.py), repeated for the bare app so both match.
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A subprocess serving HTTP on a loopback port; ``ready_path`` answers 200 when up (None:
    a server of gRPC only, up once its port takes connections)."""

    def __init__(
        self,
        command: list[str],
        port: int,
        ready_path: str | None,
        log: Path,
        grpc_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        #: Variables set for it beside this process's own.
        self.env = env or {}
        self.port = port
        #: Where its gRPC server listens, if it has one.
        self.grpc_port = grpc_port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> Process:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.command[2:4]} exited:\n{self.log()}")
            if self.ready_path is None:
                if _accepts(self.port):
                    return self
            else:
                try:
                    if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(f"not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def pids(self) -> list[int]:
        """The process and its descendants (uvicorn's worker processes)."""
        if self.process is None:
            return []
        return [self.process.pid, *descendants(self.process.pid)]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def onnx_serve(
    models: Path,
    log: Path,
    workers: int = 1,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    log_level: str | None = None,
) -> Process:
    """The server as ``make serve`` starts it (log level info, access log on), unless
    ``log_level`` says otherwise; ``args``: more flags, ``env``: more environment."""
    port, grpc_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "app.cli", "serve", "--models", str(models),
        "--port", str(port), "--grpc-port", str(grpc_port), "--workers", str(workers),
        *(args or []),
    ]  # fmt: skip
    if log_level is not None:
        command += ["--log-level", log_level]
    return Process(command, port, "/v2/health/ready", log, grpc_port, env)


def bare_grpc(answer: Path, log: Path, mode: str = "aio-uvloop") -> Process:
    """The bare grpcio server (bench/bare_grpc.py) answering ``answer``'s bytes."""
    port = free_port()
    command = [sys.executable, "-m", "bench.bare_grpc", str(port), str(answer), mode]
    return Process(command, port, None, log, grpc_port=port)


def bare_asgi(log: Path) -> Process:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "bench.bare_app:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *UVICORN_FLAGS,
    ]  # fmt: skip
    return Process(command, port, "/", log)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _process_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime (the last two: children that exited, e.g. wrk)
    return sum(int(f) for f in fields[11:15]) / TICKS


def _machine_busy_seconds() -> float:
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


class CpuWatch:
    """CPU seconds used during a measurement: by the server, by this process and the load
    generator it ran (wrk), and by everything else on the machine (``foreign``)."""

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.server = 0.0
        self.own = 0.0
        self.foreign = 0.0
        self.seconds = 0.0

    def __enter__(self) -> CpuWatch:
        self._start = time.perf_counter()
        self._busy = _machine_busy_seconds()
        self._server = sum(_process_seconds(p) for p in self.server_pids)
        self._own = _process_seconds(os.getpid())
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.server = sum(_process_seconds(p) for p in self.server_pids) - self._server
        self.own = _process_seconds(os.getpid()) - self._own
        busy = _machine_busy_seconds() - self._busy
        self.foreign = max(0.0, busy - self.server - self.own)

    def share(self, seconds: float) -> float:
        """CPU seconds as a share of the whole machine over the window (1.0 = all cores)."""
        cores = os.cpu_count() or 1
        return seconds / (self.seconds * cores) if self.seconds else 0.0
