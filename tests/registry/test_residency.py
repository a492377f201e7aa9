"""The residency policy over a real registry: what loads at start, cold starts, eviction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.errors import LoadTimeout, MemoryBudgetExceeded, ModelNotLoaded, ModelNotReady
from app.metrics import Metrics
from app.registry.config import ModelConfig
from app.registry.hooks import LoadReason
from app.registry.registry import ModelRegistry
from app.registry.repository import ModelRepository
from app.registry.residency import Residency
from app.registry.status import ModelState
from app.settings import Settings
from tests.onnx_models import looping, mlp, write_model

MIB = 1 << 20
ON_DEMAND = {"load": "on_demand"}


def build(root: Path, **settings: object) -> tuple[ModelRegistry, Residency, Metrics]:
    config = Settings(model_repository=root, default_providers="cpu", **settings)
    metrics = Metrics()
    registry = ModelRegistry(ModelRepository(root), config, metrics)
    residency = Residency(registry, config, metrics)
    registry.hooks = residency
    return registry, residency, metrics


def state(registry: ModelRegistry, name: str, version: str = "1") -> ModelState:
    return next(s.state for s in registry.index() if (s.name, s.version) == (name, version))


def loads(metrics: Metrics, name: str, reason: str, version: str = "1") -> float:
    value = metrics.registry.get_sample_value(
        "onnx_serve_model_loads_total", {"model": name, "version": version, "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("load", "reason", "live", "eager"),
    [
        (None, LoadReason.STARTUP, [], [1, 2]),  # the server's default: at start
        ("on_demand", LoadReason.STARTUP, [], []),
        ("on_demand", LoadReason.RELOAD, [], []),
        ("on_demand", LoadReason.RELOAD, [1], [1, 2]),  # loaded: reloads, newest too
        ("on_demand", LoadReason.UPLOAD, [], [1, 2]),
        ("on_demand", LoadReason.DEMAND, [], [1, 2]),
    ],
)
def test_which_versions_load_now(
    tmp_path: Path, load: str | None, reason: LoadReason, live: list[int], eager: list[int]
) -> None:
    _, residency, _ = build(tmp_path)
    config = ModelConfig.model_validate({"load": load} if load else {})
    assert residency.eager_versions(config, reason, [1, 2], live) == eager


def test_the_server_setting_makes_on_demand_the_default(tmp_path: Path) -> None:
    _, residency, _ = build(tmp_path, load_on_demand=True)
    assert residency.loads_on_demand(ModelConfig())
    assert not residency.loads_on_demand(ModelConfig(load="startup"))


def test_concurrent_cold_starts_share_one_load(tmp_path: Path) -> None:
    write_model(tmp_path, "lazy", mlp(), config=ON_DEMAND)
    write_model(tmp_path, "eager", mlp(seed=1))
    registry, residency, metrics = build(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        assert state(registry, "lazy") == ModelState.AVAILABLE
        assert registry.is_ready("lazy")
        with pytest.raises(ModelNotLoaded):
            registry.get("lazy")
        await asyncio.gather(*(residency.load_on_demand("lazy", None, 0) for _ in range(20)))
        assert registry.get("lazy").extras["residency"] == {
            "load": "on_demand", "pinned": False, "loaded_by": "demand",
        }  # fmt: skip
        await registry.close()

    asyncio.run(scenario())
    assert loads(metrics, "lazy", "demand") == 1
    assert loads(metrics, "eager", "startup") == 1


def test_a_request_that_gives_up_leaves_the_load_going(tmp_path: Path) -> None:
    write_model(tmp_path, "slow", looping(20_000), config=ON_DEMAND)
    registry, residency, metrics = build(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        with pytest.raises(LoadTimeout, match="was loading on demand"):
            await residency.load_on_demand("slow", "1", 1000)
        await residency.load_on_demand("slow", "1", 0)
        assert registry.get("slow", "1").version == 1
        await registry.close()

    asyncio.run(scenario())
    assert loads(metrics, "slow", "demand") == 1


def test_the_least_recently_used_idle_unpinned_version_goes_first(tmp_path: Path) -> None:
    # 3 MiB each (unused weights: counted for their files), in a 10 MiB budget.
    write_model(tmp_path, "pinned", looping(1, 3 * MIB), config={"pinned": True})
    for name in ("a", "b", "c"):
        write_model(tmp_path, name, looping(1, 3 * MIB), config=ON_DEMAND)
    registry, residency, metrics = build(tmp_path, memory_budget=str(10 * MIB))

    async def scenario() -> None:
        await registry.load_all()
        await residency.load_on_demand("a", None, 0)
        await residency.load_on_demand("b", None, 0)
        # Touch "a": "b" is now the least recently used.
        registry.get("a").used_at += 100
        held = registry.get("a").pool
        await residency.load_on_demand("c", None, 0)
        assert state(registry, "b") == ModelState.AVAILABLE
        assert state(registry, "a") == state(registry, "c") == ModelState.READY
        # With "a" and "c" in use and "pinned" pinned, nothing can make room for "b".
        held.hold()
        registry.get("c").pool.hold()
        with pytest.raises(MemoryBudgetExceeded, match="no room to load model 'b'") as refused:
            await residency.load_on_demand("b", None, 0)
        assert refused.value.retry_after is not None
        assert state(registry, "b") == ModelState.AVAILABLE
        held.release()
        await residency.load_on_demand("b", None, 0)
        assert state(registry, "a") == ModelState.AVAILABLE
        assert state(registry, "pinned") == ModelState.READY
        assert sum(residency.ledger.used().values()) <= 10 * MIB
        registry.get("c").pool.release()
        # An explicit unload stops serving, where an eviction waits for the next request.
        await registry.unload("a")
        assert state(registry, "a") == ModelState.UNLOADED
        with pytest.raises(ModelNotReady, match="unloaded"):
            registry.get("a")
        await registry.close()

    asyncio.run(scenario())
    evicted = metrics.registry.get_sample_value
    assert evicted("onnx_serve_model_evictions_total", {"model": "b", "version": "1"}) == 1
    assert evicted("onnx_serve_model_evictions_total", {"model": "a", "version": "1"}) == 1
    assert evicted("onnx_serve_model_evictions_total", {"model": "pinned", "version": "1"}) is None


def test_a_version_larger_than_the_budget_is_refused_and_stays_available(tmp_path: Path) -> None:
    write_model(tmp_path, "huge", looping(1, 4 * MIB), config=ON_DEMAND)
    registry, residency, _ = build(tmp_path, memory_budget=str(2 * MIB))

    async def scenario() -> None:
        await registry.load_all()
        with pytest.raises(MemoryBudgetExceeded, match="huge"):
            await residency.load_on_demand("huge", None, 0)
        assert state(registry, "huge") == ModelState.AVAILABLE
        # Now measured: refused at once, without loading it again.
        with pytest.raises(MemoryBudgetExceeded, match="more than the whole budget"):
            await residency.load_on_demand("huge", None, 0)
        assert registry.live() == []

    asyncio.run(scenario())
