"""kill -9 during an upload: the next start loads cleanly, staging is empty, no half version."""

from __future__ import annotations

import random
import signal
import socket
import threading
from pathlib import Path

import httpx
import pytest

from app.registry.validation import validate_model_file
from tests.http_probes import wait_for
from tests.integration.uploads import AUTH, KEY, infer, model_bytes, staging_entries
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

ENV = {"ONNX_SERVE_MANAGEMENT_API_KEY": KEY}
BOUNDARY = "crash-test-boundary"


def start(repo: Path) -> RunningServer:
    return RunningServer(repo, env=ENV).start()


def staged_bytes(repo: Path) -> int:
    staging = repo / ".staging"
    if not staging.is_dir():
        return 0
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())


def assert_consistent_after_restart(repo: Path) -> RunningServer:
    """Restart on ``repo``; every version on disk is whole and serves, staging is empty."""
    server = start(repo)
    assert staging_entries(repo) == []
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        for name, entry in models.items():
            assert entry["state"] == "READY", entry
            for version in entry["versions"]:
                validate_model_file(repo / name / version["version"] / "model.onnx")
        assert infer(client, "keep").status_code == 200
    return server


def test_kill_while_the_body_streams_in(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "keep", mlp())
    server = start(repo)
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    ).encode()
    declared = len(head) + 64 * 1024 * 1024
    request = (
        f"POST /models HTTP/1.1\r\nHost: {server.host_port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request + head)
        chunk = b"\x07" * 65536
        # Send slowly until the server has put part of the file on disk, then kill it.
        for _ in range(4 * 1024 * 1024 // len(chunk)):
            sock.sendall(chunk)
            if staged_bytes(repo) > 0:
                break
        wait_for(lambda: staged_bytes(repo) > 0, what="part of the upload on disk")
        server.stop(signal.SIGKILL)
    assert staged_bytes(repo) > 0  # the kill left a partial file behind
    restarted = assert_consistent_after_restart(repo)
    try:
        assert not (repo / "big").exists()
    finally:
        restarted.stop()


def test_kill_right_after_the_version_lands(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_model(repo, "keep", mlp())
    server = start(repo)
    target = repo / "fresh" / "1" / "model.onnx"

    def send() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            try:
                client.post(
                    "/models",
                    data={"name": "fresh"},
                    files={"file": ("m.onnx", mlp(16, 8192, 4).SerializeToString())},
                )
            except httpx.TransportError:
                pass  # the server was killed under it

    sender = threading.Thread(target=send)
    sender.start()
    wait_for(target.exists, what="the installed version")
    server.stop(signal.SIGKILL)
    sender.join()
    restarted = assert_consistent_after_restart(repo)
    try:
        with httpx.Client(base_url=restarted.url, timeout=30) as client:
            assert client.get("/v2/models/fresh/versions/1/ready").status_code == 200
    finally:
        restarted.stop()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_at_a_random_moment(tmp_path: Path, seed: int) -> None:
    repo = tmp_path / "models"
    write_model(repo, "keep", mlp())
    write_model(repo, "grow", mlp())
    server = start(repo)
    payload = mlp(16, 16384, 4, seed=seed).SerializeToString()
    done = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            try:
                client.post("/models", data={"name": "grow"}, files={"file": ("m.onnx", payload)})
            except httpx.TransportError:
                pass
        done.set()

    sender = threading.Thread(target=send)
    sender.start()
    done.wait(random.Random(seed).uniform(0.0, 0.3))
    server.stop(signal.SIGKILL)
    sender.join()
    restarted = assert_consistent_after_restart(repo)
    try:
        versions = sorted(p.name for p in (repo / "grow").iterdir())
        assert versions in (["1"], ["1", "2"]), versions
        with httpx.Client(base_url=restarted.url, headers=AUTH, timeout=30) as client:
            again = client.post(
                "/models", data={"name": "grow"}, files={"file": ("m.onnx", model_bytes(seed))}
            )
            assert again.status_code == 201, again.text
    finally:
        restarted.stop()
