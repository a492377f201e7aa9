"""Repository polling, one poll at a time: what changed on disk is loaded or unloaded."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from app.metrics import Metrics
from app.registry.install_plan import InstallPlan, VersionFile
from app.registry.installer import ModelInstaller
from app.registry.registry import ModelRegistry
from app.registry.repository import ModelRepository
from app.registry.status import ModelState
from app.registry.watcher import RepositoryWatcher
from app.settings import Settings
from tests.onnx_models import identity, mlp, write_model


def make_watcher(root: Path) -> RepositoryWatcher:
    registry = ModelRegistry(ModelRepository(root), Settings(model_repository=root), Metrics())
    installer = ModelInstaller(registry)
    watcher = RepositoryWatcher(installer, interval=0.2)
    installer.on_change = watcher.refresh
    return watcher


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def live(watcher: RepositoryWatcher) -> list[tuple[str, int]]:
    return [(m.name, m.version) for m in watcher.registry.live()]


def test_changes_load_once_they_hold_still_for_a_poll(tmp_path: Path) -> None:
    write_model(tmp_path, "a", identity())
    watcher = make_watcher(tmp_path)

    async def scenario() -> None:
        watcher.prime()
        await watcher.registry.load_all()
        assert await watcher.poll() == []
        write_model(tmp_path, "b", mlp())
        assert await watcher.poll() == []  # seen once: maybe still being copied in
        assert await watcher.poll() == ["b"]
        assert live(watcher) == [("a", 1), ("b", 1)]
        write_model(tmp_path, "a", identity(), 2)
        await watcher.poll()
        assert await watcher.poll() == ["a"]
        assert live(watcher) == [("a", 2), ("b", 1)]
        shutil.rmtree(tmp_path / "a" / "2")
        await watcher.poll()
        assert await watcher.poll() == ["a"]
        assert live(watcher) == [("a", 1), ("b", 1)]
        shutil.rmtree(tmp_path / "b")
        await watcher.poll()
        assert await watcher.poll() == ["b"]
        assert live(watcher) == [("a", 1)]
        assert all(s.name != "b" for s in watcher.registry.index())
        await watcher.registry.close()

    run(scenario)


def test_a_broken_new_version_keeps_the_previous_one_serving(tmp_path: Path) -> None:
    write_model(tmp_path, "m", mlp())
    watcher = make_watcher(tmp_path)

    async def scenario() -> None:
        watcher.prime()
        await watcher.registry.load_all()
        write_model(tmp_path, "m", b"not a model", 2)
        await watcher.poll()
        assert await watcher.poll() == ["m"]
        assert live(watcher) == [("m", 1)]
        status = watcher.registry.status("m", 2)
        assert status is not None and status.state == ModelState.UNAVAILABLE
        assert await watcher.poll() == []  # not retried until it changes again
        write_model(tmp_path, "m", mlp(seed=3), 2)
        await watcher.poll()
        assert await watcher.poll() == ["m"]
        assert live(watcher) == [("m", 2)]
        await watcher.registry.close()

    run(scenario)


def test_changes_made_by_this_process_are_not_loaded_twice(tmp_path: Path) -> None:
    watcher = make_watcher(tmp_path)

    async def scenario() -> None:
        watcher.prime()
        async with watcher.installer.stage() as stage:
            path = stage.new_model_path()
            path.write_bytes(mlp().SerializeToString())
            plan = InstallPlan(name="m", files=[VersionFile(path)])
            await watcher.installer.install(stage, plan)
        loaded = watcher.registry.get("m")
        assert await watcher.poll() == []
        assert await watcher.poll() == []
        assert watcher.registry.get("m") is loaded
        await watcher.registry.close()

    run(scenario)


def test_polling_runs_in_the_background(tmp_path: Path) -> None:
    watcher = make_watcher(tmp_path)
    watcher.interval = 0.01

    async def scenario() -> None:
        watcher.prime()
        watcher.start()
        write_model(tmp_path, "m", mlp())
        for _ in range(2000):
            if watcher.registry.is_ready("m"):
                break
            await asyncio.sleep(0.01)
        assert watcher.registry.is_ready("m")
        await watcher.stop()
        await watcher.registry.close()

    run(scenario)
