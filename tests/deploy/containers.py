"""The images built for real and run as containers: build-image builds them with podman from
Debian on a stand-in for the Python base image (no Docker engine or Docker Hub needed), and
podman runs them with the same settings.

build-image is not part of this repository: it is found through ``$ONNX_SERVE_BUILD_IMAGE``,
else as ``shared/tools/build-image`` beside the checkout or a folder above it. It builds
``git archive HEAD`` of the folder it runs in, so the tests hand it a throwaway clone whose
HEAD is the working tree as it is, and the image holds the code the other tests test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.conftest import ROOT, require_tool

SCRIPT_VARIABLE = "ONNX_SERVE_BUILD_IMAGE"
BUILD_TIMEOUT = 1200.0


def build_script() -> Path | None:
    """The build-image script: ``$ONNX_SERVE_BUILD_IMAGE``, else the nearest
    ``shared/tools/build-image`` beside the checkout or above it; None where there is none."""
    named = os.environ.get(SCRIPT_VARIABLE)
    if named:
        return Path(named)
    for folder in ROOT.parents:
        candidate = folder / "shared" / "tools" / "build-image"
        if candidate.is_file():
            return candidate
    return None


def require_builder() -> Path:
    """The script, root and podman; skip with the reason where one is missing (podman and its
    helpers must be there in CI, where .ci/run installs them)."""
    script = build_script()
    if script is None or not script.is_file():
        where = script or f"shared/tools/build-image beside or above {ROOT}"
        pytest.skip(f"no build-image script ({where}); set {SCRIPT_VARIABLE} to its path")
    if os.geteuid() != 0:
        pytest.skip("building and running the images needs root (rootful podman)")
    for tool in ("podman", "runc", "debootstrap"):
        require_tool(tool, tool)
    return script


def podman_environment() -> dict[str, str]:
    """The environment that gives podman build-image's settings (its containers.conf)."""
    cache = Path(os.environ.get("BUILD_IMAGE_CACHE", Path.home() / ".cache/onnx-serve-image"))
    return {**os.environ, "CONTAINERS_CONF": str(cache / "containers.conf")}


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    """Run ``podman args``; its stdout. A failure shows podman's stderr."""
    result = subprocess.run(
        ["podman", *args], env=podman_environment(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")  # fmt: skip
    return result.stdout


def git(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", "-C", str(folder), *args], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def working_tree_checkout(scratch: Path) -> Path:
    """A clone (sharing the repository's objects) whose HEAD is a commit of the working tree
    as it is now: tracked files and the untracked ones git does not ignore. The repository's
    own index, branches and files are left alone."""
    env = {
        **os.environ,
        "GIT_INDEX_FILE": str(scratch / "index"),
        "GIT_AUTHOR_NAME": "onnx-serve tests",
        "GIT_AUTHOR_EMAIL": "tests@localhost",
        "GIT_COMMITTER_NAME": "onnx-serve tests",
        "GIT_COMMITTER_EMAIL": "tests@localhost",
    }
    git(ROOT, "read-tree", "HEAD", env=env)
    git(ROOT, "add", "--all", env=env)
    tree = git(ROOT, "write-tree", env=env)
    commit = git(ROOT, "commit-tree", tree, "-p", "HEAD", "-m", "working tree", env=env)
    checkout = scratch / "checkout"
    git(ROOT, "clone", "--quiet", "--shared", "--no-checkout", str(ROOT), str(checkout))
    git(checkout, "update-ref", "--no-deref", "HEAD", commit)
    return checkout


@dataclass
class Image:
    """A built image, held by a tag of its own so that another build cannot remove it."""

    id: str
    tag: str

    def inspect(self) -> dict[str, Any]:
        """``podman image inspect``: the configuration, health check, size, ..."""
        found: list[dict[str, Any]] = json.loads(podman("image", "inspect", self.id))
        return found[0]

    def release(self) -> None:
        podman("untag", self.id, self.tag, check=False)


def build_image(flavour: str, scratch: Path) -> Image:
    """``build-image flavour`` on the working tree; the image it made."""
    script = require_builder()
    checkout = working_tree_checkout(scratch)
    result = subprocess.run(
        ["bash", str(script), flavour], cwd=checkout, env={**os.environ, "PROJ": str(checkout)},
        capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, f"build-image {flavour} failed:\n{result.stderr[-6000:]}"
    built = result.stdout.strip().splitlines()[-1]
    image_id = podman("image", "inspect", "--format", "{{.Id}}", built).strip()
    # The script's tag is shared by every checkout on this machine; this one is not.
    tag = f"localhost/onnx-serve-test:{flavour}-{uuid.uuid4().hex[:12]}"
    podman("tag", image_id, tag)
    shutil.rmtree(checkout, ignore_errors=True)
    return Image(image_id, tag)


class Container:
    """One container of an image, detached, its port 8000 published on a loopback port."""

    def __init__(self, image: Image, port: int, options: list[str], args: list[str]) -> None:
        self.name = f"onnx-serve-test-{uuid.uuid4().hex[:12]}"
        self.url = f"http://127.0.0.1:{port}"
        self.host_port = f"127.0.0.1:{port}"
        podman(
            "run", "--detach", "--name", self.name, "--publish", f"127.0.0.1:{port}:8000",
            # podman keeps health checks on systemd timers, which these machines lack; the
            # tests run the check themselves.
            "--health-interval", "disable",
            *options, image.id, *args,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Seconds until ``/v2/health/ready`` answers 200; fails if the container exits."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.state() != "running":
                raise AssertionError(f"container {self.state()}:\n{self.logs()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready after {timeout}s:\n{self.logs()}")

    def state(self) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.name).strip()

    def exit_code(self) -> int:
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name))

    def logs(self) -> str:
        """What the server wrote, stdout and stderr interleaved."""
        result = subprocess.run(
            ["podman", "logs", self.name], env=podman_environment(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=60,
        )  # fmt: skip
        return result.stdout

    def execute(
        self, *command: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``command`` inside the running container, as its user."""
        options = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return subprocess.run(
            ["podman", "exec", *options, self.name, *command], env=podman_environment(),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)
