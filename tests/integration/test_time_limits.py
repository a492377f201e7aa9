"""Model-level steps within time limits: a model whose runs never end holds up nothing.

``endless`` runs a Loop of 10^15 trips on every run, its warm-up and an upload's test run
included. In the repository it must not keep the good models from serving (nor the server
from starting or stopping); uploaded, even many times at once, it must not starve the
server of the threads its other work needs.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import SAMPLE_MODELS
from tests.hostile_models import endless
from tests.http_probes import wait_for
from tests.integration.uploads import AUTH, KEY, upload
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

WARMUP_SECONDS = 3
X = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}


def state(server: RunningServer, name: str) -> dict[str, str]:
    r = httpx.post(server.url + "/v2/repository/index", headers=AUTH, json={}, timeout=10)
    assert r.status_code == 200, r.text
    return next(entry for entry in r.json() if entry["name"] == name)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "good", mlp())
    write_model(root, "endless", endless())
    env = {
        "ONNX_SERVE_MANAGEMENT_API_KEY": KEY,
        "ONNX_SERVE_MODEL_WARMUP_TIMEOUT_SECONDS": str(WARMUP_SECONDS),
    }
    # Started without waiting for readiness: the test watches the models come up.
    with RunningServer(root, env=env, wait_ready=False) as running:
        yield running


def test_good_models_serve_while_a_bad_one_loads_and_it_ends_unavailable(
    server: RunningServer,
) -> None:
    # The good model answers while the endless one is still warming up (its warm-up is
    # only stopped after WARMUP_SECONDS), and the server is not ready yet.
    wait_for(
        lambda: httpx.post(server.url + "/v2/models/good/infer", json=X).status_code == 200,
        "the good model to serve",
    )
    assert state(server, "endless")["state"] == "LOADING"
    assert httpx.get(server.url + "/v2/health/ready").status_code == 503
    # Then the endless warm-up is stopped: the model is unavailable, with the reason.
    server.wait("/v2/health/ready", timeout=60)
    endless_state = state(server, "endless")
    assert endless_state["state"] == "UNAVAILABLE"
    assert f"took longer than {WARMUP_SECONDS} s" in endless_state["reason"]
    r = httpx.post(server.url + "/v2/models/endless/infer", json=X)
    assert r.status_code == 503, r.text
    assert "took longer than" in r.json()["error"]


def test_endless_uploads_are_refused_and_starve_nothing(server: RunningServer) -> None:
    server.wait("/v2/health/ready", timeout=60)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        # More than the default thread pool of a 2-core machine holds (6).
        with ThreadPoolExecutor(8) as pool:
            uploads = [
                pool.submit(upload, client, f"bad{i}", endless().SerializeToString())
                for i in range(8)
            ]
            # Meanwhile the server does everything else: liveness, inference, an upload
            # of a good model, an unload.
            assert client.get("/v2/health/live", timeout=10).status_code == 200
            assert client.post("/v2/models/good/infer", json=X, timeout=10).status_code == 200
            good = upload(client, "another", mlp(seed=3).SerializeToString())
            assert good.status_code == 201, good.text
            unloaded = client.post("/v2/repository/models/another/unload", json={})
            assert unloaded.status_code == 200, unloaded.text
            for future in uploads:
                refused = future.result()
                assert refused.status_code == 422, refused.text
                assert "took longer than" in refused.json()["error"]
        names = {entry["name"] for entry in client.get("/models").json()["models"]}
        assert not any(name.startswith("bad") for name in names)


def test_sigterm_exits_while_a_model_is_still_loading(tmp_path: Path) -> None:
    write_model(tmp_path, "endless", endless())
    # A warm-up limit longer than the test: the model is certainly still loading.
    env = {"ONNX_SERVE_MODEL_WARMUP_TIMEOUT_SECONDS": "3600"}
    with RunningServer(tmp_path, env=env, wait_ready=False) as running:
        assert httpx.get(running.url + "/v2/health/ready").status_code == 503
        assert running.process is not None
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(30) == 0, running.log()


def test_the_sample_models_serve_beside_an_endless_one(tmp_path: Path) -> None:
    # The reported case: the bundled models never served beside such a model.
    for name in ("digits", "colors"):
        shutil.copytree(SAMPLE_MODELS / name, tmp_path / name)
    write_model(tmp_path, "endless", endless())
    env = {"ONNX_SERVE_MODEL_WARMUP_TIMEOUT_SECONDS": "3600"}
    with RunningServer(tmp_path, env=env, wait_ready=False) as running:
        digits = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                              "data": np.zeros(64).tolist()}]}  # fmt: skip
        wait_for(
            lambda: (
                httpx.post(running.url + "/v2/models/digits/infer", json=digits).status_code == 200
            ),
            "digits to serve",
        )
        assert httpx.get(running.url + "/v2/models/colors/ready").status_code == 200
