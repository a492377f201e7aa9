"""Shared helpers of the deployment tests: repository paths and external tools."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CHART = ROOT / "helm" / "onnx-serve"
KSERVE = ROOT / "helm" / "kserve"


def require_tool(name: str, package: str) -> str:
    """The path of an installed program; skip without it, except in CI where .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run should have installed {package}")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


def venv_tool(name: str) -> str:
    """A program installed into the virtual environment that runs the tests (pip dev extras)."""
    import sys

    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is missing: install the dev extras (pip install -e '.[dev]')")
        return found
    return str(path)
