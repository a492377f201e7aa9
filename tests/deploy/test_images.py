"""The container images, read as files: lint, structure, build context and hashed locks, and the
GPU image's settings on a machine without a GPU. test_containers.py builds and runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DOCKER, ROOT, venv_tool
from tests.deploy.digits import digits_request
from tests.deploy.dockerfile import Dockerfile, Instruction, parse
from tests.server import ServerProcess, free_port

DOCKERFILES = {"cpu": DOCKER / "Dockerfile", "gpu": DOCKER / "Dockerfile.gpu"}
LOCKS = {"cpu": DOCKER / "requirements-cpu.txt", "gpu": DOCKER / "requirements-gpu.txt"}
VENV = "/opt/onnx-serve"


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def dockerfile(flavour: str) -> Dockerfile:
    return parse(DOCKERFILES[flavour])


def test_hadolint_is_clean(flavour: str) -> None:
    result = subprocess.run(
        [venv_tool("hadolint"), "--no-color", str(DOCKERFILES[flavour])],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_bases_are_pinned_and_stages_separate(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "build and runtime should be separate stages"
    for stage in dockerfile.stages:
        image = dockerfile.resolve(stage.base)
        if stage.base.startswith("$"):
            assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*@sha256:[0-9a-f]{64}", image), image
        else:
            assert stage.base in {s.name for s in dockerfile.stages}, image
    final = dockerfile.final
    copied_from_build = [i.arguments for i in final.all("COPY") if "--from=" in i.arguments]
    assert copied_from_build == [
        f"--from=shipped-dependencies {VENV} {VENV}",
        "--from=app /staged/ /",
    ], copied_from_build
    for run in final.all("RUN"):
        # The final stage only removes build tools and adds a user: no package installs,
        # compilers or caches.
        assert not re.search(
            r"apt-get|apk |pip3? install|-m pip|gcc|build-essential|curl|wget", run.arguments
        ), run.arguments


def test_runtime_stage_runs_the_server_safely(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    env = final.env()
    user = final.last("USER")
    assert user is not None and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user.arguments), user
    entrypoint, cmd = final.last("ENTRYPOINT"), final.last("CMD")
    assert entrypoint is not None and entrypoint.exec_form() == ["onnx-serve"]
    assert cmd is not None and cmd.exec_form() == ["serve"]
    assert env["PATH"].startswith(f"{VENV}/bin:")
    expose = final.last("EXPOSE")
    assert expose is not None and env["ONNX_SERVE_PORT"] == "8000"
    assert expose.arguments.split() == ["8000", "8001"], "HTTP and gRPC"
    assert final.last("VOLUME") is None, "an anonymous volume outlives every run without -v"
    assert env["ONNX_SERVE_MODEL_REPOSITORY"] == "/models"
    assert env["ONNX_SERVE_HOST"] == "0.0.0.0"
    assert env["ORT_DISABLE_TELEMETRY"] == "1"
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.arguments.partition("CMD ")
    assert "--interval=" in options and "--start-period=" in options
    assert "/v2/health/live" in " ".join(Instruction("CMD", command).exec_form() or [])


def test_gpu_image_preloads_cuda_from_pip_packages() -> None:
    env = parse(DOCKERFILES["gpu"]).final.env()
    assert env["ONNX_SERVE_PRELOAD_CUDA"] == "1"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "would expose every GPU, bypassing the scheduler"
    pins = {req.name: req for req in read_lock(LOCKS["gpu"])}
    assert pins["onnxruntime-gpu"].extras == {"cuda", "cudnn"}
    assert "onnxruntime" not in pins, "the CPU and GPU onnxruntime packages clash"
    assert any(name.startswith("nvidia-cudnn") for name in pins)
    cpu = {req.name: req for req in read_lock(LOCKS["cpu"])}
    assert not any(name.startswith(("onnxruntime-gpu", "nvidia-")) for name in cpu)
    assert cpu["onnxruntime"].specifier == pins["onnxruntime-gpu"].specifier, "same release"


# ---- build context ----------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last matching pattern decides,
    and a pattern matching a parent folder matches everything under it."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = "".join(
            ".*" if token == "**" else "[^/]*" if token == "*" else "[^/]" if token == "?" else
            re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", body)
            if token
        )  # fmt: skip
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


# Files inside copied folders that the build context must leave out.
LEFT_OUT = re.compile(r"(^|/)__pycache__/|\.pyc$|^models/[^/]*\.py$|^models/\.staging/")


def test_dockerignore_sends_what_the_images_copy_and_nothing_else() -> None:
    patterns = dockerignore_patterns()
    sources: set[str] = set()
    for path in DOCKERFILES.values():
        for stage in parse(path).stages:
            for copy in stage.all("COPY"):
                words = [w for w in copy.arguments.split() if not w.startswith("--")]
                if "--from=" not in copy.arguments:
                    sources.update(words[:-1])
    assert sources, "no COPY found"
    for source in sorted(sources):
        target = ROOT / source
        assert target.exists(), f"COPY source {source} is missing"
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if LEFT_OUT.search(relative):
                assert dockerignore_excludes(relative, patterns), f"{relative} would be sent"
            else:
                assert not dockerignore_excludes(relative, patterns), f"{relative} left out"
    for unwanted in [".git/HEAD", ".venv/bin/python", "tests/conftest.py", "bench/__init__.py",
                     "helm/onnx-serve/Chart.yaml", "docker-compose.yml", "models/build_samples.py",
                     "models/build_cnn.py", "models/.staging/x/1/model.onnx"]:  # fmt: skip
        assert dockerignore_excludes(unwanted, patterns), f"{unwanted} would be sent"


# ---- pinned requirements ----------------------------------------------------------------------


def read_lock(path: Path) -> list[Requirement]:
    """The requirements of a lock made by docker/lock.sh, each checked to carry hashes."""
    requirements = []
    for entry in re.split(r"\n(?=\S)", path.read_text()):
        if not entry.strip() or entry.startswith("#"):
            continue
        hashes = re.findall(r"--hash=(\S+)", entry)
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), entry
        requirement = Requirement(entry.splitlines()[0].rstrip(" \\"))
        requirement.name = canonicalize_name(requirement.name)
        requirements.append(requirement)
    return requirements


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_locks_pin_every_dependency_of_pyproject(kind: str) -> None:
    """Each image installs exact versions with hashes, satisfying pyproject's dependencies
    (for Linux x86_64), with the CPU image taking onnxruntime in place of onnxruntime-gpu."""
    pins = {}
    for requirement in read_lock(LOCKS[kind]):
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", requirement
        pins[requirement.name] = specifier.version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    linux = {**default_environment(), "sys_platform": "linux", "platform_machine": "x86_64"}
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(linux):
            continue
        name = canonicalize_name(req.name)
        if kind == "cpu" and name == "onnxruntime-gpu":
            name = "onnxruntime"
        assert name in pins, f"{name} is not pinned in {LOCKS[kind].name}: run docker/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], line)


# ---- the GPU image's settings without a GPU ------------------------------------------------


def substitute(text: str, paths: dict[str, str]) -> str:
    for old, new in paths.items():
        text = text.replace(old, new)
    return text


def image_environment(dockerfile: Dockerfile, paths: dict[str, str], port: int) -> dict[str, str]:
    """The final stage's ENV with paths mapped; loopback and a free port stand in for the
    container's 0.0.0.0:8000."""
    env = {k: substitute(v, paths) for k, v in dockerfile.final.env().items()}
    env["PATH"] = env["PATH"].replace("${PATH}", os.environ["PATH"])
    return {
        "HOME": os.environ.get("HOME", "/tmp"),
        **env,
        "ONNX_SERVE_HOST": "127.0.0.1",
        "ONNX_SERVE_PORT": str(port),
        "ONNX_SERVE_LOG_LEVEL": "warning",
    }


def test_gpu_image_settings_fall_back_to_cpu_without_a_gpu(tmp_path: Path) -> None:
    """The GPU image's environment (CUDA preload on) on a machine without a GPU or CUDA
    libraries: the server still starts and serves on the CPU provider."""
    dockerfile = parse(DOCKERFILES["gpu"])
    port = free_port()
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models" / "digits", models / "digits")
    paths = {VENV: str(Path(sys.executable).parent.parent), "/models": str(models)}
    env = image_environment(dockerfile, paths, port)
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "app.cli", "serve"]
    with ServerProcess(command, env, url, cwd=ROOT, log_path=tmp_path / "server.log"):
        r = httpx.post(url + "/v2/models/digits/infer", json=digits_request()[0])
        assert r.status_code == 200, r.text
        metrics = httpx.get(url + "/metrics").text
    ready = [line for line in metrics.splitlines() if line.startswith("onnx_serve_model_ready{")]
    assert ready and all('provider="CPUExecutionProvider"' in line for line in ready), ready
