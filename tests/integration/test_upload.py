"""POST /models against a real server: upload, infer, new version, delete; bad uploads refused."""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.uploads import (
    AUTH,
    KEY,
    infer,
    model_bytes,
    output,
    reference,
    snapshot,
    staging_entries,
    upload,
)
from tests.onnx_models import failing_warmup, identity
from tests.server import RunningServer

UPLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upload") / "models"


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[RunningServer]:
    repo.mkdir()
    env = {"ONNX_SERVE_MANAGEMENT_API_KEY": KEY, "ONNX_SERVE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    with RunningServer(repo, env=env) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


def test_upload_infer_new_version_infer_delete(client: httpx.Client, repo: Path) -> None:
    created = upload(client, "mlp", model_bytes(seed=0))
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v2/models/mlp/versions/1"
    body = created.json()
    assert body["version"] == "1" and body["state"] == "READY"
    assert body["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert body["size_bytes"] == len(model_bytes(0)) and len(body["sha256"]) == 64
    version, y = output(infer(client, "mlp"))
    assert version == "1" and np.allclose(y, reference(0), atol=1e-5)

    second = upload(client, "mlp", model_bytes(seed=1))
    assert second.status_code == 201, second.text
    assert second.headers["location"] == "/v2/models/mlp/versions/2"
    version, y = output(infer(client, "mlp"))
    assert version == "2" and np.allclose(y, reference(1), atol=1e-5)
    assert client.get("/v2/models/mlp").json()["versions"] == ["2"]

    gone = client.delete("/models/mlp/versions/2")
    assert gone.status_code == 200, gone.text
    version, y = output(infer(client, "mlp"))
    assert version == "1" and np.allclose(y, reference(0), atol=1e-5)
    assert not (repo / "mlp" / "2").exists()

    assert client.delete("/models/mlp").status_code == 200
    assert infer(client, "mlp").status_code == 404
    assert client.delete("/models/mlp").status_code == 404
    assert not (repo / "mlp").exists()
    assert staging_entries(repo) == []


def test_explicit_versions_conflict_and_overwrite(client: httpx.Client, repo: Path) -> None:
    assert upload(client, "pinned", model_bytes(0), version="5").status_code == 201
    before = snapshot(repo)
    clash = upload(client, "pinned", model_bytes(1), version="5")
    assert clash.status_code == 409, clash.text
    assert "overwrite=true" in clash.json()["error"]
    assert snapshot(repo) == before
    replaced = upload(client, "pinned", model_bytes(1), version="5", overwrite="true")
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["replaced"] is True
    version, y = output(infer(client, "pinned"))
    assert version == "5" and np.allclose(y, reference(1), atol=1e-5)
    assert upload(client, "pinned", model_bytes(2)).headers["location"].endswith("/versions/6")


def test_config_and_labels_come_with_the_upload(client: httpx.Client, repo: Path) -> None:
    config = json.dumps({"max_batch_size": 8, "warmup": {"batch_sizes": [1, 8]}})
    labels = "".join(f"class-{i}\n" for i in range(4))
    created = upload(client, "configured", model_bytes(), config=config, labels=labels)
    assert created.status_code == 201, created.text
    assert client.get("/v2/models/configured/config").json()["max_batch_size"] == 8
    assert (repo / "configured" / "labels.txt").read_text() == labels
    bad = upload(client, "configured", model_bytes(), config='{"max_batch_size": 8, "nope": 1}')
    assert bad.status_code == 422 and "unknown key 'nope'" in bad.json()["error"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff" * 4096, "not an ONNX model"),
        (model_bytes()[:1500], "not an ONNX model"),
        (failing_warmup().SerializeToString(), "warm-up inference on zeros failed"),
        (identity(shape=[2, 4]).SerializeToString(), "max_batch_size"),
    ],
    ids=["garbage", "truncated", "warmup-fails", "load-fails"],
)
def test_invalid_models_are_422_and_leave_nothing(
    client: httpx.Client, repo: Path, content: bytes, reason: str
) -> None:
    assert (
        upload(client, "steady", model_bytes(0), version="1", overwrite="true").status_code == 201
    )
    (repo / "steady" / "config.json").write_text('{"max_batch_size": 4}')
    before = snapshot(repo)
    for name in ("steady", "brand-new"):
        refused = upload(client, name, content, config='{"max_batch_size": 4}')
        assert refused.status_code == 422, refused.text
        assert reason in refused.json()["error"]
    assert snapshot(repo) == before
    assert staging_entries(repo) == []
    version, y = output(infer(client, "steady"))
    assert version == "1" and np.allclose(y, reference(0), atol=1e-5)
    assert all(m["name"] != "brand-new" for m in client.get("/models").json()["models"])


def multipart_body(name: str, payload: bytes, boundary: str = "lifecycle-boundary") -> bytes:
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )


def test_oversized_uploads_are_413_and_leave_nothing(client: httpx.Client, repo: Path) -> None:
    before = snapshot(repo)
    big = os.urandom(UPLOAD_LIMIT + 1)
    declared = upload(client, "huge", big)
    assert declared.status_code == 413, declared.text
    assert "upload limit" in declared.json()["error"]

    body = multipart_body("huge", big)

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(body), 16384):
            yield body[start : start + 16384]

    streamed = client.post(
        "/models",
        content=chunked(),
        headers={"Content-Type": "multipart/form-data; boundary=lifecycle-boundary"},
    )
    assert streamed.status_code == 413, streamed.text
    assert snapshot(repo) == before
    assert staging_entries(repo) == []
    assert not (repo / "huge").exists()


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        ({"json": {"name": "x"}}, 415, "multipart/form-data"),
        ({"data": {"name": "x"}, "files": {"other": ("a", b"1")}}, 400, "unknown form field"),
        ({"data": {"name": "x"}, "files": {"upload": ("a", b"1")}}, 400, "unknown form field"),
        ({"files": {"file": ("m.onnx", b"1")}}, 400, "no 'name'"),
        (
            {"data": {"name": "x", "overwrite": "maybe"}, "files": {"file": ("m", b"1")}},
            400,
            "true or false",
        ),
        (
            {"data": {"name": "x", "version": "0"}, "files": {"file": ("m", b"1")}},
            400,
            "invalid model version",
        ),
        (
            {"data": {"name": "x", "config": "{"}, "files": {"file": ("m", model_bytes())}},
            422,
            "not valid JSON",
        ),
    ],  # fmt: skip
)
def test_malformed_upload_requests(
    client: httpx.Client, request_kwargs: dict[str, object], status: int, message: str
) -> None:
    response = client.post("/models", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_form_without_a_file_and_truncated_multipart(client: httpx.Client) -> None:
    no_file = client.post("/models", data={"name": "x"}, files={})
    assert no_file.status_code in (400, 415), no_file.text
    truncated = multipart_body("x", model_bytes())[:-30]
    response = client.post(
        "/models",
        content=truncated,
        headers={"Content-Type": "multipart/form-data; boundary=lifecycle-boundary"},
    )
    assert response.status_code == 400, response.text


def test_model_list_shows_states(client: httpx.Client, repo: Path) -> None:
    assert upload(client, "listed", model_bytes()).status_code == 201
    assert upload(client, "listed", model_bytes(1)).status_code == 201
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"junk")
    assert client.post("/v2/repository/models/broken/load").status_code == 422
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["listed"]["state"] == "READY"
    assert [(v["version"], v["state"]) for v in models["listed"]["versions"]] == [
        ("1", "UNLOADED"),
        ("2", "READY"),
    ]
    assert models["broken"]["state"] == "UNAVAILABLE"
    assert "could not load the model" in models["broken"]["reason"]
    assert client.delete("/models/broken").status_code == 200
    # Asking for a model that is not there leaves no trace in the lists.
    assert client.post("/v2/repository/models/phantom/load").status_code == 404
    assert all(m["name"] != "phantom" for m in client.get("/models").json()["models"])
    assert all(e["name"] != "phantom" for e in client.post("/v2/repository/index").json())


def answer_before_the_file(server: RunningServer, fields: dict[str, str]) -> tuple[int, str]:
    """Send the fields and the start of a large file part, then read the answer at once."""
    boundary = "early-boundary"
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.onnx"\r\n\r\n'
    ).encode() + b"\x00" * 4096
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.putrequest("POST", "/models")
        connection.putheader("X-API-Key", KEY)
        connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        connection.putheader("Content-Length", str(len(head) + UPLOAD_LIMIT - 100))
        connection.endheaders(head)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_bad_names_and_taken_versions_are_refused_before_the_file_arrives(
    server: RunningServer, client: httpx.Client, repo: Path
) -> None:
    assert upload(client, "early", model_bytes(), version="1").status_code == 201
    before = snapshot(repo)
    status, body = answer_before_the_file(server, {"name": "../early"})
    assert status == 400 and "invalid model name" in body
    status, body = answer_before_the_file(server, {"name": "early", "version": "1"})
    assert status == 409 and "overwrite=true" in body
    status, body = answer_before_the_file(server, {"name": "early", "colour": "red"})
    assert status == 400 and "unknown form field 'colour'" in body
    assert snapshot(repo) == before
    assert staging_entries(repo) == []
