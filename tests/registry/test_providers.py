from __future__ import annotations

from pathlib import Path

import pytest

from app.registry import providers
from app.registry.config import InstancesConfig, ProviderSpec

ALL = [providers.TENSORRT, providers.CUDA, providers.CPU]


def test_cpu_quota_reads_cgroup_cpu_max(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert providers.cpu_quota(tmp_path) == min(2, providers.cpu_quota(tmp_path / "none"))


def test_cpu_quota_without_limit_uses_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert providers.cpu_quota(tmp_path) >= 1


def test_auto_prefers_accelerators_when_usable() -> None:
    choice, missing = providers.resolve("auto", InstancesConfig(), 1, ALL)
    assert choice.names == ALL
    assert choice.options[1] == {"device_id": 1}
    assert missing == []


def test_auto_on_a_cpu_machine_is_cpu_without_complaint() -> None:
    choice, missing = providers.resolve("auto", InstancesConfig(), None, [providers.CPU])
    assert choice.names == [providers.CPU]
    assert missing == []


def test_explicit_accelerator_that_is_absent_is_reported() -> None:
    spec: list[ProviderSpec | str] = ["cuda", "cpu"]
    choice, missing = providers.resolve(spec, InstancesConfig(), None, [providers.CPU])
    assert choice.names == [providers.CPU]
    assert missing == [providers.CUDA]


def test_gpu_kind_without_gpu_is_reported() -> None:
    choice, missing = providers.resolve("auto", InstancesConfig(kind="gpu"), None, [providers.CPU])
    assert missing == [providers.CUDA]


@pytest.mark.parametrize("spec", ["cpu", "auto"])
def test_cpu_kind_never_asks_for_accelerators(spec: str) -> None:
    choice, _ = providers.resolve(spec, InstancesConfig(kind="cpu"), 0, ALL)
    assert choice.names == [providers.CPU]
