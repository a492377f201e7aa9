"""Optimised versions in a running server: config.json's ``optimize``, the upload parameter,
the report in metadata, GET /models and /metrics, refusals, and the cache across a restart."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import SAMPLE_MODELS
from tests.integration.uploads import AUTH, KEY, snapshot, staging_entries, upload
from tests.onnx_models import cancelling, write_model
from tests.server import RunningServer

KINDS = ["int8", "int8-static", "fp16", "graph"]
DIGITS = SAMPLE_MODELS / "digits"
DIGITS_CONFIG = json.loads((DIGITS / "config.json").read_text())
LABELS = (DIGITS / "labels.txt").read_text()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits copy optimised by config.json per kind (int8-static calibrated on the
    model folder's samples.npz), a model whose optimisation must be refused, and a plain
    digits model with samples, to upload a statically quantized version of."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("optimize") / "models"
    for kind in KINDS:
        shutil.copytree(DIGITS, root / f"cfg_{kind}")
        config = {**DIGITS_CONFIG, "optimize": {"to": kind}}
        (root / f"cfg_{kind}" / "config.json").write_text(json.dumps(config))
    images = (load_digits().images[:200] / 16).astype(np.float32)[:, np.newaxis]
    np.savez(root / "cfg_int8-static" / "samples.npz", image=images)
    shutil.copytree(DIGITS, root / "up_int8-static")
    np.savez(root / "up_int8-static" / "samples.npz", image=images)
    write_model(root, "cfg_refused", cancelling(), config={"optimize": {"to": "int8"}})
    return root


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    with RunningServer(repo, env={"ONNX_SERVE_MANAGEMENT_API_KEY": KEY}) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        yield client


def seven() -> list[list[list[list[float]]]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = int(np.flatnonzero(digits.target == 7)[0])
    return (digits.images[index] / 16).reshape(1, 1, 8, 8).tolist()  # type: ignore[no-any-return]


def predicted(client: httpx.Client, path: str) -> int:
    r = client.post(path, json={"inputs": [{"name": "image", "datatype": "FP32",
                                            "shape": [1, 1, 8, 8], "data": seven()}]})  # fmt: skip
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return int(np.argmax(out["data"]))


def catalog(client: httpx.Client) -> dict[str, dict[str, object]]:
    r = client.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


@pytest.mark.parametrize("kind", KINDS)
def test_config_optimize_serves_a_checked_copy(client: httpx.Client, repo: Path, kind: str) -> None:
    meta = client.get(f"/v2/models/cfg_{kind}").json()
    report = meta["optimization"]
    assert report["kind"] == kind and report["provider"] == "cpu", report
    assert report["reused"] is False and report["cached"] is True
    assert report["accuracy"]["outputs"]["probabilities"]["top1_agreement"] >= 0.99
    assert report["speed"]["provider"] == "CPUExecutionProvider"
    assert meta["providers"] == ["CPUExecutionProvider"]
    if kind == "int8-static":
        assert report["samples"]["source"] == "samples.npz"
        assert report["samples"]["calibration"] == 100
    (entry,) = (repo / f"cfg_{kind}" / "1" / ".optimized").iterdir()
    assert entry.name.startswith(f"{kind}-cpu-") and (entry / "model.onnx").is_file()
    assert predicted(client, f"/v2/models/cfg_{kind}/infer") == 7
    listed = catalog(client)[f"cfg_{kind}"]["versions"][0]  # type: ignore[index]
    assert listed["optimization"]["kind"] == kind, listed


def test_a_refused_optimisation_leaves_the_version_unavailable_with_figures(
    client: httpx.Client,
) -> None:
    entry = catalog(client)["cfg_refused"]
    assert entry["state"] == "UNAVAILABLE"
    reason = str(entry["reason"])
    assert "int8 optimisation of 'cfg_refused' refused" in reason and "relative error" in reason
    assert client.get("/v2/models/cfg_refused/ready").status_code != 200


@pytest.mark.parametrize("kind", KINDS)
def test_upload_with_optimize_installs_both_versions(client: httpx.Client, kind: str) -> None:
    """A new model, or (int8-static) a new version of one whose folder holds samples."""
    name = f"up_{kind}"
    first = 2 if kind == "int8-static" else 1
    r = upload(
        client,
        name,
        (DIGITS / "1" / "model.onnx").read_bytes(),
        optimize=kind,
        config=json.dumps(DIGITS_CONFIG),
        labels=LABELS,
    )
    assert r.status_code == 201, r.text
    body = r.json()
    # The version policy serves the latest: the optimised one.
    assert body["version"] == str(first) and body["state"] == "UNLOADED", body
    optimized = body["optimized"]
    assert optimized["version"] == str(first + 1) and optimized["state"] == "READY", optimized
    assert optimized["optimization"]["kind"] == kind
    if kind == "int8-static":
        assert optimized["optimization"]["samples"]["source"] == "samples.npz"
    meta = client.get(f"/v2/models/{name}/versions/{first + 1}").json()
    assert meta["optimization"]["kind"] == kind
    assert predicted(client, f"/v2/models/{name}/infer") == 7
    versions = catalog(client)[name]["versions"][-2:]  # type: ignore[index]
    assert [(v["version"], v["state"]) for v in versions] == [
        (str(first), "UNLOADED"),
        (str(first + 1), "READY"),
    ]
    assert "optimization" not in versions[0]
    assert versions[1]["optimization"]["kind"] == kind


def test_a_destructive_upload_is_refused_and_nothing_is_installed(
    client: httpx.Client, repo: Path
) -> None:
    before = snapshot(repo)
    r = upload(client, "cancel", cancelling(), optimize="int8")
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error.startswith("int8 optimisation of 'cancel' refused on 64 samples"), error
    assert "'y': relative error" in error and "limit relative_error 0.05" in error
    assert snapshot(repo) == before
    assert staging_entries(repo) == []
    assert "cancel" not in catalog(client)


def test_bad_optimize_options_are_a_400(client: httpx.Client) -> None:
    r = upload(client, "bad", cancelling(), optimize="int4")
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("form field 'optimize': 'to': Input should be")


def test_requests_are_answered_while_an_upload_is_optimised(
    client: httpx.Client, server: RunningServer
) -> None:
    """The step runs in a worker process: the event loop keeps answering meanwhile."""
    finished = threading.Event()
    answer: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as other:
            model = (SAMPLE_MODELS / "digits_cnn" / "1" / "model.onnx").read_bytes()
            answer.append(upload(other, "busy", model, optimize="graph"))
        finished.set()

    thread = threading.Thread(target=send)
    thread.start()
    answered = 0
    while not finished.is_set():
        assert predicted(client, "/v2/models/cfg_int8/infer") == 7
        answered += 1
    thread.join()
    assert answer[0].status_code == 201, answer[0].text
    assert answered >= 5, answered


def test_metrics_label_each_version_with_its_optimisation(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    for line in (
        'onnx_serve_model_optimization_info{kind="int8",model="cfg_int8",target="cpu",'
        'version="1"} 1.0',
        'onnx_serve_model_optimization_info{kind="fp16",model="up_fp16",target="cpu",'
        'version="2"} 1.0',
    ):
        assert line in text


def test_a_restart_reuses_the_cached_copies(server: RunningServer, repo: Path) -> None:
    cached = {
        kind: next((repo / f"cfg_{kind}" / "1" / ".optimized").iterdir()) / "model.onnx"
        for kind in KINDS
    }
    before = {kind: (p.stat().st_ino, p.stat().st_mtime_ns) for kind, p in cached.items()}
    server.stop()
    with RunningServer(repo, env={"ONNX_SERVE_MANAGEMENT_API_KEY": KEY}) as again:
        for kind, path in cached.items():
            report = httpx.get(f"{again.url}/v2/models/cfg_{kind}").json()["optimization"]
            assert report["reused"] is True, report
            assert (path.stat().st_ino, path.stat().st_mtime_ns) == before[kind]
        reason = next(
            m["reason"]
            for m in httpx.get(f"{again.url}/models", headers=AUTH).json()["models"]
            if m["name"] == "cfg_refused"
        )
        assert "kept from an earlier load" in reason
