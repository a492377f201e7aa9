from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from app.errors import ModelNotFound, ModelNotReady, ServingError
from app.metrics import Metrics
from app.registry.registry import ModelRegistry
from app.registry.repository import ModelRepository
from app.registry.status import ModelState
from app.settings import Settings
from tests.onnx_models import add_mul, identity, mlp, write_model


def make_registry(root: Path, **settings: object) -> ModelRegistry:
    return ModelRegistry(
        ModelRepository(root), Settings(model_repository=root, **settings), Metrics()
    )


def states(registry: ModelRegistry) -> dict[tuple[str, str], tuple[ModelState, str]]:
    return {(s.name, s.version): (s.state, s.reason) for s in registry.index()}


def test_broken_model_is_unavailable_and_others_serve(tmp_path: Path) -> None:
    write_model(tmp_path, "good", identity())
    write_model(tmp_path, "broken", b"not an onnx model")
    write_model(tmp_path, "badconfig", identity(), config={"nope": 1})
    registry = make_registry(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        assert registry.get("good").version == 1
        with pytest.raises(ModelNotReady, match="unavailable"):
            registry.get("broken")
        with pytest.raises(ModelNotFound):
            registry.get("unknown")
        await registry.close()

    asyncio.run(scenario())
    found = states(registry)
    assert found[("broken", "1")][0] == ModelState.UNAVAILABLE
    assert "onnxruntime could not load" in found[("broken", "1")][1]
    assert found[("badconfig", "")] == (
        ModelState.UNAVAILABLE,
        "invalid config.json: unknown key 'nope'",
    )


def test_signature_and_batch_dimension_are_inferred(tmp_path: Path) -> None:
    write_model(tmp_path, "batched", add_mul())
    write_model(tmp_path, "fixed", identity(shape=[2, 3]))
    registry = make_registry(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        batched = registry.get("batched")
        assert [s.name for s in batched.inputs] == ["a", "b"]
        assert batched.inputs[0].shape == (-1, 4)
        assert batched.max_batch_size == 64
        assert registry.get("fixed").max_batch_size == 0
        await registry.close()

    asyncio.run(scenario())


def test_reload_swaps_versions_and_keeps_old_when_new_fails(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp(seed=1), 1)
    registry = make_registry(tmp_path)

    async def scenario() -> None:
        await registry.load("m")
        old = registry.get("m")
        write_model(tmp_path, "m", mlp(seed=2), 2)
        await registry.load("m")
        assert registry.get("m").version == 2
        with pytest.raises(ModelNotFound):
            registry.get("m", "1")
        with pytest.raises(ModelNotReady, match="unloaded"):
            await old.pool.run({"x": np.zeros((1, 16), np.float32)}, None)
        write_model(tmp_path, "m", b"garbage", 3)
        with pytest.raises(ServingError):
            await registry.load("m")
        assert registry.get("m").version == 2
        await registry.close()

    asyncio.run(scenario())
    assert states(registry)[("m", "3")][0] == ModelState.UNAVAILABLE


def test_requests_in_flight_during_a_swap_all_finish(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp(seed=1), 1)
    registry = make_registry(tmp_path)
    x = np.ones((1, 16), np.float32)

    async def one() -> None:
        model = registry.get("m")
        await model.pool.run({"x": x}, None)

    async def scenario() -> None:
        await registry.load("m")
        for v in (2, 3):
            write_model(tmp_path, "m", mlp(seed=v), v)
            results = await asyncio.gather(
                *[one() for _ in range(50)], registry.load("m"), *[one() for _ in range(50)]
            )
            assert len(results) == 101
        assert registry.get("m").version == 3
        await registry.close()

    asyncio.run(scenario())


def test_require_accelerator_fails_a_cpu_fallback(tmp_path: Path) -> None:
    write_model(tmp_path, "m", identity(), config={"providers": ["cuda", "cpu"]})
    write_model(tmp_path, "soft", identity(), config={"providers": ["cuda", "cpu"]})
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"providers": ["cuda", "cpu"], "require_accelerator": True})
    )
    registry = make_registry(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        soft = registry.get("soft")
        assert soft.fallback == ["CUDAExecutionProvider"]
        assert soft.provider == "CPUExecutionProvider"
        await registry.close()

    from app.registry.providers import usable_providers

    if "CUDAExecutionProvider" in usable_providers():
        pytest.skip("a GPU is present: nothing falls back")
    asyncio.run(scenario())
    state, reason = states(registry)[("m", "1")]
    assert state == ModelState.UNAVAILABLE
    assert "require_accelerator" in reason


def test_instances_share_the_cpu_quota(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp(), config={"instances": {"count": 2}})
    registry = make_registry(tmp_path, cpu_quota=4)

    async def scenario() -> None:
        await registry.load_all()
        model = registry.get("m")
        assert model.pool.size == 2
        results = await asyncio.gather(
            *[model.pool.run({"x": np.ones((2, 16), np.float32)}, None) for _ in range(8)]
        )
        assert all(r[0][0].shape == (2, 4) for r in results)
        await registry.close()

    asyncio.run(scenario())


def test_unload_keeps_files_and_reports_state(tmp_path: Path) -> None:
    write_model(tmp_path, "m", identity())
    registry = make_registry(tmp_path)

    async def scenario() -> None:
        await registry.load_all()
        await registry.unload("m")
        with pytest.raises(ModelNotReady, match="unloaded"):
            registry.get("m")
        await registry.load("m")
        assert registry.is_ready("m")
        await registry.close()

    asyncio.run(scenario())
    assert (tmp_path / "m" / "1" / "model.onnx").is_file()


def test_load_failures_are_marked_until_a_load_works_or_the_version_goes(tmp_path: Path) -> None:
    """``onnx_serve_model_load_failed``: 1 while a version's (or a config's) last load failed;
    a version retired by a newer one or unloaded on purpose is no failure."""
    write_model(tmp_path, "m", b"not an onnx model", 1)
    write_model(tmp_path, "cfg", identity(), config={"nope": 1})
    metrics = Metrics()
    settings = Settings(model_repository=tmp_path)
    registry = ModelRegistry(ModelRepository(tmp_path), settings, metrics)

    def failed(name: str, version: str) -> float | None:
        labels = {"model": name, "version": version}
        return metrics.registry.get_sample_value("onnx_serve_model_load_failed", labels)

    async def broken_version(version: int) -> None:
        write_model(tmp_path, "m", b"garbage", version)
        with pytest.raises(ServingError):
            await registry.load("m")
        assert failed("m", str(version)) == 1

    async def scenario() -> None:
        await registry.load_all()
        assert failed("m", "1") == 1
        assert failed("cfg", "") == 1
        write_model(tmp_path, "m", mlp(), 1)
        await registry.load("m")
        assert failed("m", "1") == 0
        # A newer version that fails: the old one keeps serving, the new one is marked.
        await broken_version(2)
        # Fixed: version 2 replaces version 1, which is no failure.
        write_model(tmp_path, "m", mlp(seed=2), 2)
        await registry.load("m")
        assert (failed("m", "1"), failed("m", "2")) == (0, 0)
        (tmp_path / "cfg" / "config.json").write_text("{}")
        await registry.load("cfg")
        assert failed("cfg", "") == 0
        # A failed load, then an unload on purpose: cleared.
        await broken_version(3)
        await registry.unload("m")
        assert failed("m", "3") == 0
        await registry.close()

    asyncio.run(scenario())
