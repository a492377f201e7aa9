"""KServe: the ServingRuntime and example InferenceService, and the server started with the
runtime's own arguments on the layout KServe's storage initializer leaves at /mnt/models."""

from __future__ import annotations

import errno
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as triton
import yaml

from app.errors import InvalidName, ModelNotFound
from app.registry.repository import ModelRepository, SingleModelRepository, open_repository
from tests.conftest import SAMPLE_MODELS, StartServer
from tests.deploy.conftest import KSERVE
from tests.deploy.digits import held_digits
from tests.onnx_models import identity, write_model
from tests.server import ServerProcess, free_port

KSERVE_PORT = 8080
KSERVE_GRPC_PORT = 8081
DIGITS = SAMPLE_MODELS / "digits"


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KSERVE / "servingruntime.yaml").read_text())
    return doc


@pytest.fixture(scope="module")
def inference_service() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((KSERVE / "inferenceservice.yaml").read_text())
    return doc


def test_grpc_inference_service_routes_h2c_to_the_runtime_grpc_port() -> None:
    doc = yaml.safe_load((KSERVE / "inferenceservice-grpc.yaml").read_text())
    model = doc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2" and model["runtime"] == "onnx-serve"
    assert model["ports"] == [{"name": "h2c", "containerPort": KSERVE_GRPC_PORT, "protocol": "TCP"}]


def container(runtime: dict[str, Any]) -> dict[str, Any]:
    (found,) = runtime["spec"]["containers"]
    assert found["name"] == "kserve-container", "KServe injects the model into this container"
    result: dict[str, Any] = found
    return result


def test_runtime_serves_onnx_over_v2_on_8080(runtime: dict[str, Any]) -> None:
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] in {"ServingRuntime", "ClusterServingRuntime"}
    spec = runtime["spec"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert formats["onnx"]["autoSelect"] is True
    assert {"v2", "grpc-v2", "v1"} <= set(spec["protocolVersions"])
    main = container(runtime)
    args = main["args"]
    assert args[0] == "serve"
    assert "--models=/mnt/models" in args and "--model-name={{.Name}}" in args
    assert "--port=8080" in args and "--host=0.0.0.0" in args
    assert f"--grpc-port={KSERVE_GRPC_PORT}" in args
    assert main["ports"] == [{"containerPort": KSERVE_PORT, "protocol": "TCP"}]
    assert main["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": KSERVE_PORT}
    assert main["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": KSERVE_PORT}
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(KSERVE_PORT)
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert main["securityContext"]["runAsNonRoot"] is True


def test_runtime_container_is_a_valid_kubernetes_container(runtime: dict[str, Any]) -> None:
    """The CRD has no schema offline, but its container is a core/v1 Container."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runtime-container"},
        "spec": {"containers": [container(runtime)]},
    }
    kubernetes_validate.validate(pod, "1.31.0", strict=True)


def test_example_inference_service_picks_this_runtime(
    runtime: dict[str, Any], inference_service: dict[str, Any]
) -> None:
    assert inference_service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert inference_service["kind"] == "InferenceService"
    model = inference_service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].split("://")[0] in {"pvc", "gs", "s3", "https", "hf"}
    kubernetes_validate.validate(
        {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": model["resources"]}]},
        },
        "1.31.0",
        strict=True,
    )  # fmt: skip


def kserve_port() -> int:
    """8080 as KServe expects, unless something on this machine holds it already."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", KSERVE_PORT))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return free_port()
    return KSERVE_PORT


def test_server_with_runtime_args_serves_the_storage_layout(
    runtime: dict[str, Any], inference_service: dict[str, Any], tmp_path: Path
) -> None:
    # What the storage initializer leaves for a single-file model, and what may come with it.
    mnt_models = tmp_path / "mnt" / "models"
    mnt_models.mkdir(parents=True)
    shutil.copy(DIGITS / "1" / "model.onnx", mnt_models / "model.onnx")
    shutil.copy(DIGITS / "labels.txt", mnt_models / "labels.txt")
    (mnt_models / "README.md").write_text("exported from a notebook\n")
    name = inference_service["metadata"]["name"]
    port = kserve_port()
    grpc_port = free_port()
    args = [
        arg.replace("{{.Name}}", name)
        .replace("/mnt/models", str(mnt_models))
        # Tests listen on loopback only; KServe's pod binds every interface.
        .replace("--host=0.0.0.0", "--host=127.0.0.1")
        .replace(f"--port={KSERVE_PORT}", f"--port={port}")
        .replace(f"--grpc-port={KSERVE_GRPC_PORT}", f"--grpc-port={grpc_port}")
        for arg in container(runtime)["args"]
    ]
    command = [sys.executable, "-m", "app.cli", *args]
    url = f"http://127.0.0.1:{port}"
    env = {"PATH": "/usr/bin:/bin", "ONNX_SERVE_LOG_LEVEL": "warning"}
    for item in container(runtime).get("env", []):
        env[item["name"]] = item["value"]
    with ServerProcess(command, env, url, cwd=tmp_path, log_path=tmp_path / "server.log"):
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        assert httpx.get(f"{url}/v2/models/{name}/ready").status_code == 200
        index = httpx.get(f"{url}/v2/models/{name}").json()
        assert index["versions"] == ["1"]

        images, labels = held_digits()
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            tensor = triton.InferInput("image", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            result = client.infer(name, [tensor])
            probabilities = result.as_numpy("probabilities")
        finally:
            client.close()
        assert probabilities is not None
        assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9

        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as over_grpc:
            tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
            tensor.set_data_from_numpy(images)
            answer = over_grpc.infer(name, [tensor]).as_numpy("probabilities")
        np.testing.assert_allclose(answer, probabilities, rtol=1e-5, atol=1e-6)

        v1 = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": images[:2].tolist()})
        assert v1.status_code == 200, v1.text
        assert len(v1.json()["predictions"]) == 2

        other = httpx.get(f"{url}/v2/models/{name}-other")
        assert other.status_code == 404, other.text
        assert "error" in other.json()


def test_versioned_layout_through_the_environment(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A storage URI that points at a folder with ``<version>/model.onnx`` inside."""
    root = tmp_path / "models"
    root.mkdir()
    for version in (1, 2):
        target = root / str(version) / "model.onnx"
        target.parent.mkdir()
        target.write_bytes(identity().SerializeToString())
    server = start_server(root, env={"ONNX_SERVE_MODEL_NAME": "echo"})
    index = httpx.get(f"{server.url}/v2/models/echo").json()
    assert index["versions"] == ["2"], index  # the default policy serves the latest
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]
    }
    r = httpx.post(f"{server.url}/v2/models/echo/versions/2/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4]


# ---- the repository behind it -----------------------------------------------------------------


def test_flat_model_is_version_one(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "config.json").write_text('{"max_batch_size": 4}')
    repo = SingleModelRepository(tmp_path, "clf")
    assert repo.model_names() == ["clf"]
    assert repo.has_model("clf") and not repo.has_model("other")
    assert repo.versions("clf") == [1]
    assert repo.model_file("clf", 1) == tmp_path.resolve() / "model.onnx"
    assert repo.labels("clf") == ["a", "b"]
    assert repo.config("clf").max_batch_size == 4
    with pytest.raises(ModelNotFound):
        repo.versions("other")


def test_lone_onnx_file_of_another_name(tmp_path: Path) -> None:
    (tmp_path / "resnet50.onnx").write_bytes(b"onnx")
    repo = SingleModelRepository(tmp_path, "resnet")
    assert repo.versions("resnet") == [1]
    assert repo.model_file("resnet", 1).name == "resnet50.onnx"
    (tmp_path / "other.onnx").write_bytes(b"onnx")
    assert repo.versions("resnet") == [], "two candidates: no guess"


def test_versioned_folders_and_flat_file_precedence(tmp_path: Path) -> None:
    write_model(tmp_path, "ignored", identity())  # a nested repository is not this layout
    for version in (1, 3):
        (tmp_path / str(version)).mkdir()
        (tmp_path / str(version) / "model.onnx").write_bytes(b"onnx")
    repo = SingleModelRepository(tmp_path, "m")
    assert repo.versions("m") == [1, 3]
    assert repo.model_file("m", 3) == tmp_path.resolve() / "3" / "model.onnx"
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    assert repo.versions("m") == [1], "a model.onnx at the root is the model"
    assert repo.model_file("m", 1) == tmp_path.resolve() / "model.onnx"


def test_names_are_validated_and_plain_repositories_unchanged(tmp_path: Path) -> None:
    with pytest.raises(InvalidName):
        SingleModelRepository(tmp_path, "../etc")
    assert type(open_repository(tmp_path)) is ModelRepository
    assert isinstance(open_repository(tmp_path, "x"), SingleModelRepository)
    assert SingleModelRepository(tmp_path / "absent", "x").model_names() == []
