"""Memory figures: amounts and budgets, the container's limit, what a load is counted for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.registry.budget import MemoryLedger, VersionFiles
from app.registry.memory import (
    HOST,
    GpuMemory,
    LoadMeasurement,
    MemoryCost,
    budget_bytes,
    memory_limit,
    resident_bytes,
)
from app.registry.model import ModelVersion
from app.settings import Settings, parse_amount
from tests.onnx_models import load_on_cpu, mlp

MIB = 1 << 20


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        ("1048576", (1048576.0, False)),
        ("512Mi", (512.0 * MIB, False)),
        ("2GiB", (2.0 * 1024 * MIB, False)),
        ("1.5G", (1.5e9, False)),
        ("300 MB", (3e8, False)),
        ("75%", (75.0, True)),
        ("100%", (100.0, True)),
    ],
)
def test_amounts_are_bytes_or_a_percentage(text: str, amount: tuple[float, bool]) -> None:
    assert parse_amount(text) == amount


@pytest.mark.parametrize("text", ["", "lots", "-5", "0", "0%", "101%", "5 parsecs", "1e9"])
def test_other_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)


def test_a_bad_budget_stops_the_server_with_its_name() -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        Settings(memory_budget="half")
    with pytest.raises(ValueError, match="gpu_memory_budget"):
        Settings(gpu_memory_budget="200%")


def test_budgets_are_shared_by_workers() -> None:
    assert budget_bytes(None, 1000) is None
    assert budget_bytes("50%", 8 * MIB) == 4 * MIB
    assert budget_bytes("50%", 8 * MIB, share=2) == 2 * MIB
    assert budget_bytes("3Mi", 0, share=3) == MIB


def test_the_limit_comes_from_cgroup_v2_then_v1_then_the_machine(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("1073741824\n")
    assert memory_limit(tmp_path) == 1 << 30
    (tmp_path / "memory.max").write_text("max\n")
    machine = memory_limit(tmp_path / "nowhere")
    assert machine > 0
    assert memory_limit(tmp_path) == machine
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert memory_limit(tmp_path) == 1 << 29
    # cgroup v1's "no limit" is a number near 2**63.
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory_limit(tmp_path) == machine


def test_a_load_is_measured_from_what_it_allocates(tmp_path: Path) -> None:
    assert resident_bytes() > 0
    measurement = LoadMeasurement(GpuMemory())
    held = np.ones(4 * MIB, dtype=np.uint8)  # allocated through malloc, like a session
    cost = measurement.cost()
    assert 4 * MIB <= cost.host < 6 * MIB
    assert cost.as_dict() == {"host_bytes": cost.host}
    del held


def test_without_nvml_there_are_no_gpus() -> None:
    gpus = GpuMemory()
    assert gpus.used() == {} and gpus.totals() == {}


def test_costs_merge_by_kind_of_memory() -> None:
    a = MemoryCost({HOST: 5, "gpu0": 7})
    b = MemoryCost({HOST: 9, "gpu1": 3})
    assert a.merged(b) == MemoryCost({HOST: 9, "gpu0": 7, "gpu1": 3})
    assert a.as_dict() == {"host_bytes": 5, "gpu_bytes": {"0": 7}}


@pytest.fixture
def model(tmp_path: Path) -> ModelVersion:
    return load_on_cpu(tmp_path, mlp())


def files(size: int, stamp: int = 0) -> VersionFiles:
    return VersionFiles(size, (("model.onnx", size, stamp),))


def test_a_version_counts_for_at_least_its_files(model: ModelVersion) -> None:
    ledger = MemoryLedger({HOST: 10 * MIB})
    assert ledger.account(model, files(3 * MIB), MemoryCost({HOST: MIB})).host == 3 * MIB
    assert ledger.used() == {HOST: 3 * MIB}
    assert ledger.account(model, files(MIB), MemoryCost({HOST: 2 * MIB})).host == 2 * MIB
    assert ledger.remove(model) is not None
    assert ledger.used() == {HOST: 0}


def test_a_measured_version_is_its_own_next_estimate(model: ModelVersion) -> None:
    ledger = MemoryLedger({HOST: 10 * MIB})
    guess, measured = ledger.estimate(model.name, model.version, files(MIB))
    assert not measured and guess.host == MIB
    ledger.account(model, files(MIB), MemoryCost({HOST: 3 * MIB}))
    assert ledger.estimate(model.name, model.version, files(MIB)) == (
        MemoryCost({HOST: 3 * MIB}),
        True,
    )
    # New files on disk: a guess again, no larger than the budget.
    guess, measured = ledger.estimate(model.name, model.version, files(40 * MIB, 1))
    assert not measured and guess.host == 10 * MIB


def test_shortfall_and_what_can_never_fit(model: ModelVersion) -> None:
    ledger = MemoryLedger({HOST: 10 * MIB})
    ledger.account(model, files(6 * MIB), MemoryCost())
    assert ledger.shortfall(MemoryCost({HOST: 4 * MIB})) == {}
    assert ledger.shortfall(MemoryCost({HOST: 5 * MIB})) == {HOST: MIB}
    assert ledger.too_large(MemoryCost({HOST: 10 * MIB})) is None
    assert "more than the whole budget of 10.0 MiB" in str(
        ledger.too_large(MemoryCost({HOST: 11 * MIB}))
    )
    assert not MemoryLedger({}).enforced
