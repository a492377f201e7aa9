"""Version swaps under load, unload and load, and tritonclient's load_model with files."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.http_probes import wait_for
from tests.integration.uploads import (
    AUTH,
    KEY,
    X,
    infer,
    model_bytes,
    output,
    reference,
    snapshot,
    staging_entries,
    upload,
)
from tests.server import RunningServer

CLIENT_THREADS = 4


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lifecycle") / "models"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with RunningServer(repo, env={"ONNX_SERVE_MANAGEMENT_API_KEY": KEY}) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture
def triton_client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.host_port)


def trickled_infer(client: httpx.Client, name: str) -> httpx.Response:
    """An infer request whose body arrives in two parts, a moment apart."""
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": X.ravel().tolist()}
            ]
        }
    ).encode()

    def parts() -> Iterator[bytes]:
        yield body[:40]
        time.sleep(0.002)
        yield body[40:]

    return client.post(
        f"/v2/models/{name}/infer", content=parts(), headers={"Content-Type": "application/json"}
    )


def test_version_swaps_under_concurrent_load_fail_no_request(
    client: httpx.Client, server: RunningServer
) -> None:
    """Clients hammer the model while new versions replace it; every request succeeds."""
    assert upload(client, "swap", model_bytes(seed=0)).status_code == 201
    stop = threading.Event()
    answers: list[Counter[str]] = [Counter() for _ in range(CLIENT_THREADS)]
    failures: list[str] = []
    last_seen: dict[int, str] = {}

    def hammer(index: int) -> None:
        # Half the clients send their bodies in two parts with a pause between, so their
        # requests are often looked up before a swap and run after it.
        send = infer if index % 2 == 0 else trickled_infer
        with httpx.Client(base_url=server.url, timeout=30) as own:
            while not stop.is_set():
                response = send(own, "swap")
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                version, y = output(response)
                if not np.allclose(y, reference(int(version) - 1), atol=1e-5):
                    failures.append(f"v{version} answered with another version's output")
                answers[index][version] += 1
                last_seen[index] = version

    def answered() -> int:
        return sum(sum(c.values()) for c in answers)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(CLIENT_THREADS)]
    for thread in threads:
        thread.start()
    try:
        for seed in (1, 2, 3, 4):
            wanted = 20 * seed
            wait_for(lambda: answered() > wanted)  # noqa: B023 - called before the loop moves on
            created = upload(client, "swap", model_bytes(seed=seed))
            assert created.status_code == 201, created.text
            assert created.json()["version"] == str(seed + 1)
        # An overwrite of the serving version and a delete are swaps too.
        replaced = upload(client, "swap", model_bytes(seed=4), version="5", overwrite="true")
        assert replaced.status_code == 201, replaced.text
        assert client.delete("/models/swap/versions/5").status_code == 200
        # Run until every client has been answered by the version now serving.
        wait_for(lambda: all(last_seen.get(i) == "4" for i in range(CLIENT_THREADS)))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    total = sum(answers, Counter())
    assert {"1", "4"} <= set(total), total
    assert sum(total.values()) > 100


def test_unload_keeps_files_and_load_brings_it_back(client: httpx.Client, repo: Path) -> None:
    assert upload(client, "cycled", model_bytes()).status_code == 201
    files = snapshot(repo / "cycled")
    assert client.post("/v2/repository/models/cycled/unload").status_code == 200
    assert infer(client, "cycled").status_code == 503
    assert snapshot(repo / "cycled") == files
    states = {e["name"]: e for e in client.post("/v2/repository/index").json()}
    assert states["cycled"]["state"] == "UNLOADED"
    listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert listed["cycled"]["state"] == "UNLOADED"
    assert client.post("/v2/repository/models/cycled/load").status_code == 200
    version, y = output(infer(client, "cycled"))
    assert version == "1" and np.allclose(y, reference(0), atol=1e-5)


def test_tritonclient_load_with_files_and_unload(
    triton_client: triton.InferenceServerClient, repo: Path
) -> None:
    config = json.dumps({"max_batch_size": 16})
    triton_client.load_model(
        "via-triton",
        headers=AUTH,
        config=config,
        files={"file:1/model.onnx": model_bytes(seed=5), "file:2/model.onnx": model_bytes(6)},
    )
    assert triton_client.is_model_ready("via-triton")
    assert triton_client.get_model_config("via-triton")["max_batch_size"] == 16
    assert sorted(p.name for p in (repo / "via-triton").iterdir()) == ["1", "2", "config.json"]

    inputs = [triton.InferInput("x", list(X.shape), "FP32")]
    inputs[0].set_data_from_numpy(X)
    result = triton_client.infer("via-triton", inputs)
    assert result.get_response()["model_version"] == "2"
    assert np.allclose(result.as_numpy("y"), reference(6), atol=1e-5)

    triton_client.unload_model("via-triton", headers=AUTH)
    assert not triton_client.is_model_ready("via-triton")
    assert (repo / "via-triton" / "2" / "model.onnx").is_file()
    triton_client.load_model("via-triton", headers=AUTH)
    assert triton_client.is_model_ready("via-triton", "2")

    # The config GET /v2/models/{m}/config returns is accepted back as it is (Triton shape).
    served = triton_client.get_model_config("via-triton")
    served["version_policy"] = {"all": {}}
    triton_client.load_model("via-triton", headers=AUTH, config=json.dumps(served))
    assert triton_client.is_model_ready("via-triton", "1")
    assert triton_client.is_model_ready("via-triton", "2")


def test_tritonclient_load_refusals_leave_nothing(
    triton_client: triton.InferenceServerClient, repo: Path
) -> None:
    before = snapshot(repo)
    cases = [
        ({"file:1/model.onnx": b"\xff" * 500}, None, "not an ONNX model"),
        ({"file:1/model.onnx": model_bytes()}, '{"instances": {"count": 0}}', "instances.count"),
        ({"file:1/model.onnx": model_bytes()}, '{"name": "other"}', "names model 'other'"),
        ({"file:1/model.onnx": model_bytes()}, '{"platform": "tensorrt_plan"}', "platform"),
        ({"file:1/weights.bin": b"1"}, None, "only file:<version>/model.onnx"),
    ]
    for files, config, reason in cases:
        with pytest.raises(InferenceServerException, match=reason):
            triton_client.load_model("refused", headers=AUTH, config=config, files=files)
    assert snapshot(repo) == before
    assert staging_entries(repo) == []
    with pytest.raises(InferenceServerException, match="not in the repository"):
        triton_client.load_model("refused", headers=AUTH, config="{}")


def test_delete_of_a_model_in_use_drains_first(client: httpx.Client, server: RunningServer) -> None:
    assert upload(client, "doomed", model_bytes()).status_code == 201
    stop = threading.Event()
    statuses: Counter[int] = Counter()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as own:
            while not stop.is_set():
                statuses[infer(own, "doomed").status_code] += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        wait_for(lambda: statuses[200] > 10)
        assert client.delete("/models/doomed").status_code == 200
        wait_for(lambda: statuses[404] > 0)
    finally:
        stop.set()
        thread.join()
    # Requests end either answered or told the model is gone: never a server error.
    assert set(statuses) <= {200, 404, 503}, statuses
