"""Two server processes sharing one repository converge through polling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http_probes import wait_for
from tests.integration.uploads import (
    AUTH,
    KEY,
    infer,
    model_bytes,
    output,
    reference,
    upload,
)
from tests.onnx_models import write_model
from tests.server import RunningServer

ENV = {"ONNX_SERVE_MANAGEMENT_API_KEY": KEY, "ONNX_SERVE_REPOSITORY_POLL_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shared") / "models"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def replicas(repo: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    first = RunningServer(repo, env=ENV, log_path=repo.parent / "first.log").start()
    try:
        second = RunningServer(repo, env=ENV, log_path=repo.parent / "second.log").start()
        try:
            with (
                httpx.Client(base_url=first.url, headers=AUTH, timeout=30) as a,
                httpx.Client(base_url=second.url, headers=AUTH, timeout=30) as b,
            ):
                yield a, b
        finally:
            second.stop()
    finally:
        first.stop()


def serves(client: httpx.Client, name: str, version: str, seed: int) -> bool:
    response = infer(client, name)
    if response.status_code != 200:
        return False
    answered, y = output(response)
    return answered == version and bool(np.allclose(y, reference(seed), atol=1e-5))


def test_upload_to_one_replica_is_served_by_the_other(
    replicas: tuple[httpx.Client, httpx.Client],
) -> None:
    a, b = replicas
    assert upload(a, "shared", model_bytes(seed=0)).status_code == 201
    wait_for(lambda: serves(b, "shared", "1", 0), what="the second replica to load v1")
    assert upload(a, "shared", model_bytes(seed=1)).status_code == 201
    wait_for(lambda: serves(b, "shared", "2", 1), what="the second replica to load v2")
    assert b.get("/v2/models/shared").json()["versions"] == ["2"]
    # A delete on the second replica reaches the first one.
    assert b.delete("/models/shared/versions/2").status_code == 200
    wait_for(lambda: serves(a, "shared", "1", 0), what="the first replica to fall back to v1")
    assert b.delete("/models/shared").status_code == 200
    wait_for(lambda: infer(a, "shared").status_code == 404, what="the first replica to unload")


def test_a_broken_version_on_disk_keeps_the_previous_one_serving(
    replicas: tuple[httpx.Client, httpx.Client], repo: Path
) -> None:
    a, b = replicas
    assert upload(a, "sturdy", model_bytes(seed=2)).status_code == 201
    wait_for(lambda: serves(b, "sturdy", "1", 2), what="v1 on the second replica")
    write_model(repo, "sturdy", b"copied in broken", version=2)

    def broken_seen(client: httpx.Client) -> bool:
        states = client.post("/v2/repository/index").json()
        return any(
            e["name"] == "sturdy" and e["version"] == "2" and e["state"] == "UNAVAILABLE"
            for e in states
        )

    for client in (a, b):
        wait_for(lambda c=client: broken_seen(c), what="the broken v2 to be tried")
        assert serves(client, "sturdy", "1", 2)
    # Fixing the file on disk is picked up too.
    write_model(repo, "sturdy", model_bytes(seed=3), version=2)
    for client in (a, b):
        wait_for(lambda c=client: serves(c, "sturdy", "2", 3), what="the fixed v2")
