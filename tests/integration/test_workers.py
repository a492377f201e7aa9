"""Several worker processes: connections spread over them, a dead worker is replaced, the
port is checked at start, and workers stop when their supervisor is gone."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hostile_models import endless
from tests.http_probes import wait_for
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer, free_port, serve_until_exit, taken_port

INFO = {"ONNX_SERVE_LOG_LEVEL": "info"}
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
).encode()


def full_log(server: RunningServer) -> str:
    return server.log_path.read_text(errors="replace")


def worker_pids(server: RunningServer) -> list[int]:
    """The worker processes the supervisor started first, from its log line."""
    found = wait_for(
        lambda: re.search(r"worker processes \(pids ([\d, ]+)\)", full_log(server)),
        "the supervisor's line",
    )
    return [int(pid) for pid in found.group(1).split(", ")]


def worker_of(response: httpx.Response | http.client.HTTPResponse) -> str:
    """Which worker answered: generated request ids start with a prefix of the process."""
    request_id = response.headers["x-request-id"] if isinstance(response, httpx.Response) else (
        response.getheader("x-request-id") or ""
    )  # fmt: skip
    return request_id[:16]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "mlp", mlp())
    with RunningServer(root, env=INFO, args=["--workers", "2"]) as running:
        yield running


def test_a_clients_four_connections_end_up_two_on_each_worker(server: RunningServer) -> None:
    """The kernel hashes each connection to a worker (all four on one, one time in 8); the
    worker with more than its share asks the extra ones to reconnect until the spread is
    even, and then nothing moves."""
    host, port = server.host_port.rsplit(":", 1)
    connections: list[http.client.HTTPConnection | None] = [None] * 4
    owners = [""] * 4
    stable_since = time.monotonic()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for i in range(4):
                connection = connections[i]
                if connection is None:
                    connection = connections[i] = http.client.HTTPConnection(host, int(port))
                connection.request("POST", "/v2/models/mlp/infer", BODY)
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()
                owners[i] = worker_of(response)
                if response.getheader("connection") == "close":
                    connection.close()
                    connections[i] = None
                    stable_since = time.monotonic()
            if sorted(Counter(owners).values()) != [2, 2]:
                stable_since = time.monotonic()
            elif time.monotonic() - stable_since > 1.0:
                break  # even for a second: ten of the workers' counting rounds
        else:
            raise AssertionError(f"the four connections never settled two and two: {owners}")
    finally:
        for connection in connections:
            if connection is not None:
                connection.close()


def test_a_worker_that_dies_is_replaced(server: RunningServer) -> None:
    first, _ = worker_pids(server)
    os.kill(first, signal.SIGKILL)
    wait_for(
        lambda: f"(pid {first}) exited with -9" in full_log(server), "the supervisor to notice"
    )
    # Connections keep being answered, and soon by two workers again.
    seen: set[str] = set()

    def two_workers() -> bool:
        r = httpx.post(server.url + "/v2/models/mlp/infer", content=BODY)
        assert r.status_code == 200, r.text
        seen.add(worker_of(r))
        return len(seen) >= 2

    wait_for(two_workers, "the new worker to answer")
    assert full_log(server).count("Started server process") == 3


def test_a_port_in_use_fails_at_once(tmp_path: Path) -> None:
    write_model(tmp_path / "models", "mlp", mlp())
    with taken_port() as port:
        done = serve_until_exit(
            tmp_path / "models", "--port", str(port), "--grpc-port", "0", "--workers", "2"
        )
    assert done.returncode == 3, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: it is in use" in done.stderr


def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    """The gRPC port is taken: every worker's startup would fail the same way."""
    write_model(tmp_path / "models", "mlp", mlp())
    with taken_port() as port:
        done = serve_until_exit(
            tmp_path / "models", "--port", str(free_port()), "--grpc-port", str(port),
            "--workers", "2", timeout=120,
        )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    assert "could not start; stopping the other workers" in done.stderr


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    write_model(tmp_path / "models", "mlp", mlp())
    server = RunningServer(tmp_path / "models", env=INFO, args=["--workers", "2"]).start()
    pids = worker_pids(server)
    try:
        assert server.process is not None
        server.process.kill()
        server.process.wait()
        wait_for(lambda: not any(alive(pid) for pid in pids), "the workers to stop")
    finally:
        server.stop()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "the supervisor" in full_log(server) and "is gone: draining" in full_log(server)


def test_a_worker_listens_once_its_models_have_loaded(tmp_path: Path) -> None:
    """A worker whose models still load takes no connections (the kernel would hand it
    clients it could only answer "loading" while the others serve); SIGTERM still stops it."""
    models = tmp_path / "models"
    write_model(models, "mlp", mlp())
    write_model(models, "endless", endless())
    port, grpc_port = free_port(), free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, **INFO, "ONNX_SERVE_MODEL_WARMUP_TIMEOUT_SECONDS": "3600"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--models", str(models),
             "--port", str(port), "--grpc-port", str(grpc_port), "--workers", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        # Both workers have loaded the good model; the endless one keeps them loading.
        wait_for(
            lambda: log.read_text(errors="replace").count("model mlp v1 ready") == 2,
            "both workers to load mlp",
            timeout=60,
        )
        for target in (port, grpc_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", target), timeout=5).close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
