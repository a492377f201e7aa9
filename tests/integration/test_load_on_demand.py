"""Loads on demand against real servers: a start that loads nothing, cold starts over every
route, version policies, batching, uploads, deletes and polling across two replicas, and a
restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.http_probes import metric, metric_values, wait_for
from tests.integration.uploads import AUTH, KEY, X, infer, model_bytes, output, reference, upload
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer

ENV = {"ONNX_SERVE_MANAGEMENT_API_KEY": KEY, "ONNX_SERVE_REPOSITORY_POLL_SECONDS": "0.2"}
ON_DEMAND = ["--load-on-demand"]
#: Models and the seed of their weights (``reference(seed)`` is what they answer).
SEEDS = {"m0": 0, "m1": 1, "m2": 2, "m3": 3, "batched": 4, "eager": 5}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("on-demand") / "models"
    for name, seed in SEEDS.items():
        write_model(root, name, mlp(seed=seed))
    (root / "batched" / "config.json").write_text('{"dynamic_batching": {}}')
    (root / "eager" / "config.json").write_text('{"load": "startup"}')
    # Two versions, both served: a request for none gets the newest.
    write_model(root, "two", mlp(seed=6), version=1)
    write_model(root, "two", mlp(seed=7), version=2)
    (root / "two" / "config.json").write_text('{"version_policy": {"policy": "all"}}')
    write_model(root, "broken", b"not an onnx model")
    return root


@pytest.fixture(scope="module")
def replicas(repo: Path) -> Iterator[tuple[RunningServer, RunningServer]]:
    logs = repo.parent
    with (
        RunningServer(repo, env=ENV, args=ON_DEMAND, log_path=logs / "a.log") as first,
        RunningServer(repo, env=ENV, args=ON_DEMAND, log_path=logs / "b.log") as second,
    ):
        yield first, second


@pytest.fixture(scope="module")
def a(replicas: tuple[RunningServer, RunningServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replicas[0].url, headers=AUTH, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def b(replicas: tuple[RunningServer, RunningServer]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=replicas[1].url, headers=AUTH, timeout=60) as client:
        yield client


def states(client: httpx.Client) -> dict[tuple[str, str], str]:
    r = client.post("/v2/repository/index", json={})
    assert r.status_code == 200, r.text
    return {(e["name"], e["version"]): e["state"] for e in r.json()}


def loads(server: RunningServer) -> dict[tuple[str, str, str], float]:
    """``onnx_serve_model_loads_total`` by model, version and reason."""
    out = {}
    for (name, labels), value in metric_values(server.url).items():
        if name == "onnx_serve_model_loads_total":
            found = dict(labels)
            out[(found["model"], found["version"], found["reason"])] = value
    return out


def test_a_start_loads_only_what_must_load_at_start(
    replicas: tuple[RunningServer, RunningServer], a: httpx.Client
) -> None:
    found = states(a)
    assert found[("eager", "1")] == "READY"
    for name in ("m0", "m1", "m2", "m3", "batched"):
        assert found[(name, "1")] == "AVAILABLE"
    assert found[("two", "1")] == found[("two", "2")] == "AVAILABLE"
    assert loads(replicas[0]) == {("eager", "1", "startup"): 1.0}
    assert metric(replicas[0].url, "onnx_serve_sessions") == 1
    # Ready to serve: the server, and each model by v2 and KServe v1.
    assert a.get("/v2/health/ready").status_code == 200
    assert a.get("/v2/models/m0/ready").json()["ready"] is True
    assert a.get("/v1/models/m0").json() == {"name": "m0", "ready": True}
    # Statistics list only what is loaded.
    assert a.get("/v2/models/m0/stats").json() == {"model_stats": []}


def test_the_first_request_of_each_route_loads_the_model(a: httpx.Client) -> None:
    first = infer(a, "m0")
    assert first.headers["x-cold-start"] == "true"
    np.testing.assert_allclose(output(first)[1], reference(0), rtol=1e-5)
    assert "x-cold-start" not in infer(a, "m0").headers
    v1 = a.post("/v1/models/m1:predict", json={"instances": X.tolist()})
    assert v1.status_code == 200, v1.text
    assert v1.headers["x-cold-start"] == "true"
    np.testing.assert_allclose(v1.json()["predictions"], reference(1), rtol=1e-5)
    plain = a.post("/predict", json={"model": "m2", "inputs": {"x": X.tolist()}})
    assert plain.status_code == 200, plain.text
    assert plain.headers["x-cold-start"] == "true"
    # Metadata of a model not loaded yet loads it too (clients read it before inferring).
    meta = a.get("/v2/models/m3")
    assert meta.status_code == 200, meta.text
    assert meta.json()["inputs"][0]["name"] == "x"
    assert meta.json()["memory"]["host_bytes"] > 0
    assert meta.json()["residency"]["loaded_by"] == "demand"
    assert states(a)[("m3", "1")] == "READY"


def test_a_model_that_fails_to_load_is_unavailable_and_the_others_serve(
    a: httpx.Client,
) -> None:
    assert states(a)[("broken", "1")] == "AVAILABLE"
    first = infer(a, "broken")
    assert first.status_code == 503, first.text
    assert "could not be loaded" in first.json()["error"]
    assert first.headers["x-cold-start"] == "true"
    assert states(a)[("broken", "1")] == "UNAVAILABLE"
    again = infer(a, "broken")
    assert again.status_code == 503 and "unavailable" in again.json()["error"], again.text
    assert "x-cold-start" not in again.headers
    assert a.get("/v2/models/broken/ready").status_code == 503
    np.testing.assert_allclose(output(infer(a, "m0"))[1], reference(0), rtol=1e-5)


def test_versions_load_one_at_a_time(
    replicas: tuple[RunningServer, RunningServer], a: httpx.Client
) -> None:
    version, y = output(infer(a, "two"))
    assert version == "2"
    np.testing.assert_allclose(y, reference(7), rtol=1e-5)
    assert states(a)[("two", "1")] == "AVAILABLE"
    older = a.post("/v2/models/two/versions/1/infer", json=_body())
    assert older.headers["x-cold-start"] == "true"
    np.testing.assert_allclose(output(older)[1], reference(6), rtol=1e-5)
    assert states(a)[("two", "1")] == states(a)[("two", "2")] == "READY"
    counted = loads(replicas[0])
    assert counted[("two", "1", "demand")] == counted[("two", "2", "demand")] == 1


def test_a_batched_model_loads_once_for_concurrent_requests(
    replicas: tuple[RunningServer, RunningServer], a: httpx.Client
) -> None:
    with ThreadPoolExecutor(16) as threads:
        answers = list(threads.map(lambda _: infer(a, "batched"), range(16)))
    for answer in answers:
        np.testing.assert_allclose(output(answer)[1], reference(4), rtol=1e-5)
    assert loads(replicas[0])[("batched", "1", "demand")] == 1


def test_an_upload_loads_at_once_and_the_other_replica_waits_for_a_request(
    replicas: tuple[RunningServer, RunningServer], a: httpx.Client, b: httpx.Client
) -> None:
    uploaded = upload(a, "m1", model_bytes(seed=11))
    assert uploaded.status_code == 201, uploaded.text
    assert loads(replicas[0])[("m1", "2", "upload")] == 1
    np.testing.assert_allclose(output(infer(a, "m1"))[1], reference(11), rtol=1e-5)
    # The other replica sees the new version on disk and waits for a request to load it.
    wait_for(lambda: states(b).get(("m1", "2")) == "AVAILABLE", "replica b to see version 2")
    answered = infer(b, "m1")
    assert answered.headers["x-cold-start"] == "true"
    assert output(answered)[0] == "2"
    assert loads(replicas[1]).get(("m1", "2", "reload"), 0) == 0
    # Deleting the new version brings back the previous one, loaded at once where the model
    # was loaded and on its next request where it was not.
    deleted = a.delete("/models/m1/versions/2")
    assert deleted.status_code == 200, deleted.text
    version, y = output(infer(a, "m1"))
    assert version == "1"
    np.testing.assert_allclose(y, reference(1), rtol=1e-5)
    wait_for(lambda: states(b).get(("m1", "1")) in ("READY", "AVAILABLE"), "replica b to follow")
    wait_for(lambda: ("m1", "2") not in states(b), "replica b to drop version 2")
    np.testing.assert_allclose(output(infer(b, "m1"))[1], reference(1), rtol=1e-5)


def test_a_model_copied_in_waits_for_its_first_request(
    repo: Path, a: httpx.Client, b: httpx.Client
) -> None:
    write_model(repo, "fresh", mlp(seed=12))
    for client in (a, b):
        wait_for(lambda c=client: states(c).get(("fresh", "1")) == "AVAILABLE", "the new model")
        answered = infer(client, "fresh")
        assert answered.headers["x-cold-start"] == "true"
        np.testing.assert_allclose(output(answered)[1], reference(12), rtol=1e-5)


def test_a_restart_loads_nothing_until_asked(repo: Path) -> None:
    with RunningServer(repo, env=ENV, args=ON_DEMAND, log_path=repo.parent / "c.log") as again:
        assert loads(again) == {("eager", "1", "startup"): 1.0}
        with httpx.Client(base_url=again.url, timeout=60) as client:
            for name, seed in [("m0", 0), ("fresh", 12), ("batched", 4)]:
                answered = infer(client, name)
                assert answered.headers["x-cold-start"] == "true"
                np.testing.assert_allclose(output(answered)[1], reference(seed), rtol=1e-5)
        assert sum(loads(again).values()) == 4


def _body() -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                        "data": X.ravel().tolist()}]}  # fmt: skip
