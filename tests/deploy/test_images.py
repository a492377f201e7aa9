"""The container images: lint, structure, build context, pinned requirements, and what the CPU
image runs, reproduced without a Docker engine (its install steps into a fresh venv, then its
command), plus the GPU image's settings on a machine without a GPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DOCKER, ROOT, venv_tool
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
        name, _, tag = image.partition(":")
        assert "@sha256:" in image or re.search(r"\d+\.\d+", tag), f"unpinned base {image}"
        assert tag != "latest", image
    final = dockerfile.final
    copied_from_build = [i.arguments for i in final.all("COPY") if "--from=" in i.arguments]
    assert copied_from_build == [f"--from=build {VENV} {VENV}"], copied_from_build
    for run in final.all("RUN"):
        # The final stage only adds a user: no package installs, compilers or caches.
        assert not re.search(r"apt-get|apk |pip |gcc|build-essential|curl|wget", run.arguments), (
            run.arguments
        )


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
    assert expose is not None and expose.arguments == env["ONNX_SERVE_PORT"] == "8000"
    volume = final.last("VOLUME")
    assert volume is not None and volume.exec_form() == [env["ONNX_SERVE_MODEL_REPOSITORY"]]
    assert env["ONNX_SERVE_HOST"] == "0.0.0.0"
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
    pins = dict(read_lock(LOCKS["gpu"]))
    assert "onnxruntime-gpu[cuda,cudnn]" in pins
    assert "onnxruntime" not in pins, "the CPU and GPU onnxruntime packages clash"
    assert any(name.startswith("nvidia-cudnn") for name in pins)
    assert "onnxruntime-gpu" not in " ".join(dict(read_lock(LOCKS["cpu"])))


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
LEFT_OUT = re.compile(r"(^|/)__pycache__/|\.pyc$|^models/build_samples\.py$|^models/\.staging/")


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
                     "helm/onnx-serve/Chart.yaml", "docker-compose.yml",
                     "models/build_samples.py", "models/.staging/x/1/model.onnx"]:  # fmt: skip
        assert dockerignore_excludes(unwanted, patterns), f"{unwanted} would be sent"


# ---- pinned requirements ----------------------------------------------------------------------


def read_lock(path: Path) -> list[tuple[str, str]]:
    pins = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins.append((name.strip(), version.strip()))
    return pins


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_locks_pin_every_dependency_of_pyproject(kind: str) -> None:
    """Each image installs exact versions satisfying pyproject's dependencies (for Linux
    x86_64), with the CPU image taking onnxruntime in place of onnxruntime-gpu."""
    pins = {canonicalize_name(re.sub(r"\[.*\]", "", n)): v for n, v in read_lock(LOCKS[kind])}
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    linux = {**default_environment(), "sys_platform": "linux", "platform_machine": "x86_64"}
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(linux):
            continue
        name = canonicalize_name(req.name)
        if kind == "cpu" and name == "onnxruntime-gpu":
            name = "onnxruntime"
        assert name in pins, f"{name} is not pinned in {LOCKS[kind].name}: run docker/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], line)


# ---- the CPU image's install and command, without an engine -----------------------------------


def outside_context(directory: str, names: list[str]) -> set[str]:
    """For ``shutil.copytree``: the names in ``directory`` that .dockerignore leaves out."""
    patterns = dockerignore_patterns()
    where = Path(directory).relative_to(ROOT).as_posix()
    return {n for n in names if dockerignore_excludes(f"{where}/{n}", patterns)}


def substitute(text: str, paths: dict[str, str]) -> str:
    for old, new in paths.items():
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def cpu_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The CPU image's file system, in miniature: its build stage's COPYs and RUNs replayed in
    a temporary folder, with /opt/onnx-serve, /src and /models mapped into it."""
    base = tmp_path_factory.mktemp("image")
    dockerfile = parse(DOCKERFILES["cpu"])
    paths = {VENV: str(base / "opt"), "/models": str(base / "models")}
    for stage in dockerfile.stages:
        workdir = base / "work" / (stage.name or "final")
        workdir.mkdir(parents=True)
        env = {**os.environ, **stage.env(), "PYTHON": sys.executable}
        # Reuse pip's download cache between runs: the image build disables it to stay small.
        env.pop("PIP_NO_CACHE_DIR", None)
        for instruction in stage.instructions:
            if instruction.keyword == "COPY" and "--from=" not in instruction.arguments:
                words = [w for w in instruction.arguments.split() if not w.startswith("--")]
                *sources, destination = words
                target = Path(substitute(destination, paths))
                if not target.is_absolute():
                    target = workdir / target
                for source in sources:
                    origin = ROOT / source
                    into = target / origin.name if destination.endswith("/") else target
                    if origin.is_dir():
                        shutil.copytree(origin, into, ignore=outside_context)
                    else:
                        into.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(origin, into)
            elif instruction.keyword == "RUN" and stage.name == "build":
                command = substitute(instruction.arguments, paths)
                result = subprocess.run(
                    command, shell=True, cwd=workdir, env=env, capture_output=True, text=True
                )
                assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    yield {"venv": base / "opt", "models": base / "models", "root": base}


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


def held_digits(count: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` of scikit-learn's bundled digits as the model's input, and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[:count] / 16.0).astype(np.float32).reshape(count, 1, 8, 8)
    return images, digits.target[:count]


def digits_request(count: int = 16) -> tuple[dict[str, object], np.ndarray]:
    """A v2 JSON request for :func:`held_digits`, and their labels."""
    images, labels = held_digits(count)
    tensor = {
        "name": "image",
        "shape": list(images.shape),
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }
    return {"inputs": [tensor]}, labels


def test_cpu_image_installs_and_serves_the_sample(cpu_image: dict[str, Path]) -> None:
    venv = cpu_image["venv"]
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    versions = dict(line.split("==") for line in installed.split())
    assert versions["onnx-serve"], installed
    assert "onnxruntime-gpu" not in versions, "the CPU image must not carry the CUDA build"
    for name, version in read_lock(LOCKS["cpu"]):
        assert canonicalize_name(name) in {canonicalize_name(n) for n in versions}, name
        assert versions.get(name, versions.get(canonicalize_name(name))) in (version, None)

    dockerfile = parse(DOCKERFILES["cpu"])
    port = free_port()
    paths = {VENV: str(venv), "/models": str(cpu_image["models"])}
    env = image_environment(dockerfile, paths, port)
    entrypoint = dockerfile.final.last("ENTRYPOINT")
    cmd = dockerfile.final.last("CMD")
    assert entrypoint is not None and cmd is not None
    command = (entrypoint.exec_form() or []) + (cmd.exec_form() or [])
    # The command resolves through the image's PATH: the venv's console script.
    command[0] = shutil.which(command[0], path=env["PATH"]) or command[0]
    assert command[0] == str(venv / "bin" / "onnx-serve")
    url = f"http://127.0.0.1:{port}"
    healthcheck = dockerfile.final.last("HEALTHCHECK")
    assert healthcheck is not None
    probe = healthcheck.arguments.partition("CMD ")[2]
    probe_args = Instruction("CMD", probe).exec_form() or []
    probe_args[0] = shutil.which(probe_args[0], path=env["PATH"]) or probe_args[0]

    with ServerProcess(
        command, env, url, cwd=cpu_image["models"], log_path=cpu_image["root"] / "server.log"
    ) as server:
        assert httpx.get(url + "/v2/health/live").status_code == 200
        r = httpx.get(url + "/v2/models/digits")
        assert r.status_code == 200, r.text
        request, labels = digits_request()
        r = httpx.post(url + "/v2/models/digits/infer", json=request)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert outputs["probabilities"]["shape"] == [len(labels), 10]
        probabilities = np.array(outputs["probabilities"]["data"], np.float32).reshape(-1, 10)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
        assert (probabilities.argmax(axis=1) == labels).mean() >= 0.9, probabilities
        metrics = httpx.get(url + "/metrics").text
        assert 'onnx_serve_model_ready{model="digits",provider="CPUExecutionProvider",' in metrics
        ok = subprocess.run(probe_args, env=env, capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        log = server.log()
    assert "Traceback" not in log, log
    # Stopped, the same health check fails: it does test something.
    down = subprocess.run(probe_args, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0


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
