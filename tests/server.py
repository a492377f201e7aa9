"""Server processes on loopback ports, for integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """``command`` in a subprocess, serving on ``url``; ``start`` waits for ``ready_path``."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        url: str,
        log_path: Path,
        cwd: Path | None = None,
        ready_path: str = "/v2/health/ready",
    ) -> None:
        self.command = command
        self.env = env
        self.url = url
        self.log_path = log_path
        self.cwd = cwd
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            self.wait(self.ready_path)
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RunningServer(ServerProcess):
    """``onnx-serve serve`` on ``models``; ``url`` is its base address once ready."""

    def __init__(
        self,
        models: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wait_ready: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.host_port = f"127.0.0.1:{self.port}"
        #: The gRPC server's address (every test server runs one, as users' servers do).
        self.grpc_port = free_port()
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.models = models
        command = [
            sys.executable, "-m", "app.cli", "serve",
            "--models", str(models), "--port", str(self.port),
            "--grpc-port", str(self.grpc_port), *(args or []),
        ]  # fmt: skip
        super().__init__(
            command,
            env={**os.environ, "ONNX_SERVE_LOG_LEVEL": "warning", **(env or {})},
            url=f"http://127.0.0.1:{self.port}",
            log_path=log_path or models.parent / f"server-{self.port}.log",
            ready_path="/v2/health/ready" if wait_ready else "/v2/health/live",
        )

    def start(self) -> RunningServer:
        super().start()
        return self

    def __enter__(self) -> RunningServer:
        return self.start()


def serve_until_exit(
    models: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``onnx-serve serve --models models *args`` run to its end: a server that cannot start
    exits by itself (its status and output say why)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--models", str(models), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on meanwhile."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port: int = taken.getsockname()[1]
        yield port
