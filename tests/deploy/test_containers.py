"""The images built for real and run as containers (see tests/deploy/containers.py).

The CPU image runs the way docker-compose.yml runs it: read-only root filesystem, a tmpfs on
/tmp, a models folder mounted on /models, no capabilities. The GPU image is built and checked
without a GPU (its libraries resolve, it serves on the CPU); with a GPU it serves on CUDA."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import ROOT
from tests.deploy.containers import Container, Image, build_image, podman, podman_environment
from tests.deploy.digits import accuracy, digits_request
from tests.http_probes import HeldRequest, metric, wait_for
from tests.server import free_port

pytestmark = pytest.mark.container

UID = 10001
MANAGEMENT_KEY = "management-key-for-the-container-0123"
# What a container started like docker-compose.yml's services may write: /tmp and /models.
READ_ONLY = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]  # fmt: skip
SITE = "/opt/onnx-serve/lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    image = build_image("cpu", tmp_path_factory.mktemp("build-cpu"))
    yield image
    image.release()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder for /models, writable by the image's user as the docs ask."""
    root = tmp_path_factory.mktemp("container-models") / "models"
    shutil.copytree(ROOT / "models" / "digits", root / "digits")
    for path in [root, *root.rglob("*")]:
        os.chown(path, UID, UID)
    return root


@pytest.fixture(scope="module")
def served(cpu_image: Image, models: Path) -> Iterator[Container]:
    container = Container(
        cpu_image,
        free_port(),
        [*READ_ONLY, "--volume", f"{models}:/models",
         "--env", f"ONNX_SERVE_MANAGEMENT_API_KEY={MANAGEMENT_KEY}"],
        [],
    )  # fmt: skip
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


def test_image_configuration(cpu_image: Image) -> None:
    inspected = cpu_image.inspect()
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["onnx-serve"] and config["Cmd"] == ["serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp"}
    assert not config.get("Volumes"), "an anonymous volume would outlive every run"
    assert "ORT_DISABLE_TELEMETRY=1" in config["Env"]
    # build-image writes Docker's image format, which keeps the health check.
    healthcheck = inspected["Healthcheck"]
    assert healthcheck["Test"][0] == "CMD" and "/v2/health/live" in healthcheck["Test"][-1]


def test_serves_health_metadata_and_predictions(served: Container) -> None:
    assert httpx.get(served.url + "/v2/health/live").status_code == 200
    meta = httpx.get(served.url + "/v2/models/digits")
    assert meta.status_code == 200, meta.text
    (tensor,) = meta.json()["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"][1:]) == ("image", "FP32", [1, 8, 8])

    request, labels = digits_request()
    r = httpx.post(served.url + "/v2/models/digits/infer", json=request)
    assert r.status_code == 200, r.text
    assert accuracy(r.json(), labels) >= 0.9, r.text

    seven = (ROOT / "docs" / "seven.png").read_bytes()
    r = httpx.post(
        served.url + "/predict",
        data={"model": "digits"},
        files={"file": ("seven.png", seven, "image/png")},
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0][0]["label"] == "7", r.text


def test_upload_needs_the_management_key_and_lands_in_models(
    served: Container, models: Path
) -> None:
    model = (ROOT / "models" / "digits" / "1" / "model.onnx").read_bytes()
    form = {"data": {"name": "uploaded"}, "files": {"file": ("model.onnx", model)}}
    refused = httpx.post(served.url + "/models", **form)  # type: ignore[arg-type]
    assert refused.status_code == 401, refused.text
    headers = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    r = httpx.post(served.url + "/models", headers=headers, timeout=60, **form)  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    written = models / "uploaded" / "1" / "model.onnx"
    assert written.read_bytes() == model
    assert written.stat().st_uid == UID
    request, labels = digits_request()
    r = httpx.post(served.url + "/v2/models/uploaded/infer", json=request)
    assert r.status_code == 200, r.text
    assert accuracy(r.json(), labels) >= 0.9


def test_runs_as_its_user_on_a_read_only_root(served: Container) -> None:
    status = served.execute("cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == [str(UID)] * 4 and fields["Gid"].split() == [str(UID)] * 4
    assert int(fields["CapEff"], 16) == 0
    command = served.execute("cat", "/proc/1/cmdline").stdout.split("\0")
    assert command[1:3] == ["/opt/onnx-serve/bin/onnx-serve", "serve"], command
    # Every writable mount outside the kernel's own file systems: the documented two.
    writable = set()
    for line in served.execute("cat", "/proc/self/mounts").stdout.splitlines():
        _, point, kind, options = line.split()[:4]
        if "rw" in options.split(",") and not point.startswith(("/proc", "/sys", "/dev")):
            writable.add(point)
    assert writable == {"/tmp", "/models"}, writable
    # Even root, in this container, cannot write the image's files.
    probe = subprocess.run(
        ["podman", "exec", "--user", "0", served.name, "touch", "/opt/onnx-serve/probe"],
        env=podman_environment(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe


def test_carries_no_build_tools(served: Container) -> None:
    for python in ("python3", "/opt/onnx-serve/bin/python"):
        found = served.execute(
            python, "-c",
            "import importlib.util as u; "
            "print([m for m in ('pip', 'setuptools', 'wheel', 'pkg_resources') if u.find_spec(m)])",
        )  # fmt: skip
        assert found.returncode == 0 and found.stdout.strip() == "[]", (python, found)
    assert served.execute("sh", "-c", "command -v pip pip3 wheel").stdout == ""


def test_health_check_passes_and_can_fail(served: Container, cpu_image: Image) -> None:
    healthy = podman("healthcheck", "run", served.name, check=False)
    assert healthy.strip() in ("", "healthy"), healthy  # podman 4 prints nothing when healthy
    test = cpu_image.inspect()["Healthcheck"]["Test"]
    assert served.execute(*test[1:]).returncode == 0
    # The same command against a port where nothing listens.
    assert served.execute(*test[1:], env={"ONNX_SERVE_PORT": "1"}).returncode != 0


def test_log_is_clean(served: Container) -> None:
    httpx.get(served.url + "/v2/models/digits")
    log = served.logs()
    assert "Uvicorn running on http://0.0.0.0:8000" in log, log
    for unwanted in ("Traceback", "telemetry", "[W:onnxruntime", "WARNING", "ERROR"):
        assert unwanted not in log, log


def test_several_workers_keep_their_metric_files_in_tmp(cpu_image: Image) -> None:
    """Multi-worker mode is the other writer the docs name: its metric files go to /tmp."""
    container = Container(cpu_image, free_port(), [*READ_ONLY, "--env", "ONNX_SERVE_WORKERS=2"], [])
    try:
        container.wait_ready()
        request, _ = digits_request(4)
        for _ in range(6):
            r = httpx.post(container.url + "/v2/models/digits/infer", json=request)
            assert r.status_code == 200, r.text
        # Each worker moves its figures to the shared files every second or so; any scrape,
        # whichever worker answers it, then sums them all.
        wait_for(
            lambda: metric(container.url, "onnx_serve_request_success_total",
                           model="digits", version="1", protocol="rest") == 6,
            "both workers' requests to be counted",
        )  # fmt: skip
        files = container.execute("sh", "-c", "ls /tmp/onnx-serve-metrics-*/").stdout.split()
        assert any(name.endswith(".db") for name in files), files
        assert "Traceback" not in container.logs()
    finally:
        container.remove()


def test_sigterm_drains_the_request_in_flight_then_exits_0(cpu_image: Image) -> None:
    """The image's own models, read-only; `podman stop` sends the image's stop signal."""
    container = Container(cpu_image, free_port(), READ_ONLY, [])
    try:
        container.wait_ready()
        request, labels = digits_request()
        body = json.dumps(request).encode()
        with HeldRequest(container.host_port, "/v2/models/digits/infer", body) as held:
            # In flight from the moment its headers are in.
            wait_for(
                lambda: metric(container.url, "onnx_serve_requests_in_flight") == 1,
                "the held request to be in flight",
            )
            with subprocess.Popen(
                ["podman", "stop", "--time", "30", container.name], env=podman_environment(),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ) as stopping:  # fmt: skip
                wait_for(
                    lambda: httpx.get(container.url + "/v2/health/ready").status_code == 503,
                    "readiness to turn false",
                )
                # podman says "stopping" from the signal on, until the server exits.
                assert container.state() == "stopping", "exited with a request in flight"
                status, _, data = held.finish()
                assert status == 200, data
                assert accuracy(json.loads(data), labels) >= 0.9
                assert stopping.wait(60) == 0
        assert container.exit_code() == 0, container.logs()
        log = container.logs()
        assert "SIGTERM: draining 1 in-flight requests" in log, log
        assert "Traceback" not in log, log
    finally:
        container.remove()


# ---- the GPU image ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """Built in CI; elsewhere only with ONNX_SERVE_GPU_IMAGE=1 (a cold build downloads 2 GB of
    CUDA and cuDNN and takes minutes); ONNX_SERVE_GPU_IMAGE=0 skips it in CI too."""
    wanted = os.environ.get("ONNX_SERVE_GPU_IMAGE", "1" if os.environ.get("CI") else "0")
    if wanted != "1":
        pytest.skip("the GPU image is built in CI or with ONNX_SERVE_GPU_IMAGE=1 (minutes, 2 GB)")
    image = build_image("gpu", tmp_path_factory.mktemp("build-gpu"))
    yield image
    image.release()


def run_in(image: Image, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", "run", "--rm", "--entrypoint", command[0], image.id, *command[1:]],
        env=podman_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_gpu_image_has_every_library_onnxruntime_loads(gpu_image: Image) -> None:
    # Every NEEDED entry of onnxruntime's and NVIDIA's libraries resolves in the image, except
    # the driver's libcuda (the NVIDIA runtime mounts it) and TensorRT, which is not shipped.
    script = (
        f"export LD_LIBRARY_PATH={SITE}/nvidia/cu13/lib:{SITE}/nvidia/cudnn/lib; "
        f"for f in {SITE}/nvidia/*/lib/*.so* {SITE}/onnxruntime/capi/*.so*; do "
        'ldd "$f" | sed -n "s|^\\s*\\(\\S*\\) => not found|${f##*/} \\1|p"; done'
    )
    result = run_in(gpu_image, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    missing = {tuple(line.split()) for line in result.stdout.splitlines()}
    allowed = {("libonnxruntime_providers_cuda.so", "libcuda.so.1"),
               ("libcudnn_engines_runtime_compiled.so.9", "libcuda.so.1"),
               ("libonnxruntime_providers_tensorrt.so", "libnvinfer.so.10"),
               ("libonnxruntime_providers_tensorrt.so", "libnvonnxparser.so.10")}  # fmt: skip
    assert missing <= allowed, missing - allowed
    # What onnxruntime loads by path (CUDA and cuDNN; cuDNN opens its parts as needed).
    loaded = run_in(
        gpu_image, "python", "-c",
        "import json, onnxruntime as ort; ort.preload_dlls(); "
        "print(json.dumps(sorted({l.split()[-1].rsplit('/', 1)[-1] "
        "for l in open('/proc/self/maps') if '/nvidia/' in l})))",
    )  # fmt: skip
    assert loaded.returncode == 0 and "Failed to load" not in loaded.stdout, loaded
    names = set(json.loads(loaded.stdout.strip().splitlines()[-1]))
    for library in ("libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13", "libcurand.so.10",
                    "libcufft.so.12", "libnvrtc.so.13", "libcudnn.so.9"):  # fmt: skip
        assert library in names, names
    # What only compiling needs, and what nothing opens, is gone.
    leftovers = run_in(
        gpu_image, "sh", "-c",
        f"ls -d {SITE}/nvidia/*/include {SITE}/nvidia/*/lib/*.a {SITE}/nvidia/*/lib/libcufftw* "
        f"{SITE}/nvidia/*/lib/libnvblas* {SITE}/pip {SITE}/setuptools 2>/dev/null; true",
    )  # fmt: skip
    assert leftovers.stdout == "", leftovers.stdout


def test_gpu_image_serves_on_the_cpu_without_a_gpu(gpu_image: Image) -> None:
    container = Container(gpu_image, free_port(), READ_ONLY, [])
    try:
        container.wait_ready()
        request, labels = digits_request()
        r = httpx.post(container.url + "/v2/models/digits/infer", json=request)
        assert r.status_code == 200, r.text
        assert accuracy(r.json(), labels) >= 0.9
        meta = httpx.get(container.url + "/v2/models/digits").json()
        assert meta["providers"][0] == "CPUExecutionProvider", meta
        assert "Traceback" not in container.logs()
    finally:
        container.remove()


def cdi_gpus() -> bool:
    """Whether podman can hand this machine's NVIDIA GPUs to a container (a CDI spec)."""
    specs = [Path("/etc/cdi/nvidia.yaml"), Path("/var/run/cdi/nvidia.yaml")]
    return Path("/dev/nvidia0").exists() and any(spec.exists() for spec in specs)


@pytest.mark.gpu
@pytest.mark.skipif(not cdi_gpus(), reason="no NVIDIA GPU with a CDI spec for podman here")
def test_gpu_image_serves_on_cuda(gpu_image: Image) -> None:
    container = Container(
        gpu_image, free_port(), [*READ_ONLY, "--device", "nvidia.com/gpu=all"], []
    )
    try:
        container.wait_ready(timeout=300)
        meta = httpx.get(container.url + "/v2/models/digits").json()
        assert meta["providers"][0] == "CUDAExecutionProvider", meta
        request, labels = digits_request()
        r = httpx.post(container.url + "/v2/models/digits/infer", json=request)
        assert r.status_code == 200, r.text
        assert accuracy(r.json(), labels) >= 0.9
    finally:
        container.remove()
