"""Re-resolve the images' pinned requirements from pyproject.toml.

The images install exact versions so that a rebuild gives the same image. The pins follow the
versions installed in the environment that runs this script (the one the tests ran in), and
the resolution is for that interpreter and platform, so run it on Linux x86_64 with the
images' Python minor version, from the repository root:

    .venv/bin/python docker/lock.py

The CPU image swaps ``onnxruntime-gpu`` for the CPU-only ``onnxruntime`` of the same version
(a quarter of the size); the GPU image adds the ``cuda`` and ``cudnn`` extras that bring the
CUDA and cuDNN libraries as pip packages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}
HEADER = """\
# Pinned requirements of the {kind} image, resolved by docker/lock.py from pyproject.toml.
# Regenerate with `.venv/bin/python docker/lock.py` after changing dependencies.
"""


def project_requirements() -> list[str]:
    """pyproject's dependencies without the onnxruntime variants, markers dropped."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out = []
    for line in doc["project"]["dependencies"]:
        req = Requirement(line)
        if canonicalize_name(req.name) in RUNTIMES:
            continue
        req.marker = None
        out.append(str(req))
    return out


def installed_constraints() -> str:
    """``name==version`` of every distribution in this environment except onnxruntime's."""
    lines = set()
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name not in RUNTIMES and name != "onnx-serve":
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines)) + "\n"


def resolve(requirements: list[str], constraints: Path) -> list[tuple[str, str]]:
    """What pip would install for ``requirements`` into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
                "--ignore-installed", "--report", str(report), "-c", str(constraints),
                *requirements,
            ],
            check=True,
        )  # fmt: skip
        installed = json.loads(report.read_text())["install"]
    return sorted(
        (canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"])
        for item in installed
    )


def write(path: Path, kind: str, pins: list[tuple[str, str]], extras: dict[str, str]) -> None:
    lines = [f"{name}{extras.get(name, '')}=={version}" for name, version in pins]
    path.write_text(HEADER.format(kind=kind) + "\n".join(lines) + "\n")


def main() -> int:
    runtime_version = metadata.version("onnxruntime-gpu")
    base = project_requirements()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write(installed_constraints())
    constraints = Path(handle.name)
    try:
        cpu = resolve([*base, f"onnxruntime=={runtime_version}"], constraints)
        gpu = resolve([*base, f"onnxruntime-gpu[cuda,cudnn]=={runtime_version}"], constraints)
    finally:
        constraints.unlink()
    write(ROOT / "docker" / "requirements-cpu.txt", "CPU", cpu, {})
    write(
        ROOT / "docker" / "requirements-gpu.txt",
        "GPU",
        gpu,
        {"onnxruntime-gpu": "[cuda,cudnn]"},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
