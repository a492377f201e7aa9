"""Atomic installs, undo on a failed load, deletes, and the staging folder's cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from app.errors import Conflict, InsufficientStorage, InvalidModel, ModelNotFound, ServingError
from app.metrics import Metrics
from app.registry.install_plan import InstallPlan, VersionFile
from app.registry.installer import ModelInstaller, next_free_version
from app.registry.registry import ModelRegistry
from app.registry.repository import ModelRepository
from app.settings import Settings
from tests.onnx_models import identity, mlp, write_model

X = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)


def make_installer(root: Path) -> ModelInstaller:
    registry = ModelRegistry(ModelRepository(root), Settings(model_repository=root), Metrics())
    return ModelInstaller(registry)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def files_under(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its content (the staging folder must be empty)."""
    staging = root / ".staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".staging" not in p.parts
    }


async def install(
    installer: ModelInstaller,
    name: str,
    model: onnx.ModelProto | bytes,
    version: int | None = None,
    **plan: object,
) -> tuple[int, str, bool]:
    async with installer.stage() as stage:
        path = stage.new_model_path()
        path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
        done = await installer.install(
            stage,
            InstallPlan(name=name, files=[VersionFile(path, version)], **plan),  # type: ignore[arg-type]
        )
    return done[0].version, done[0].state, done[0].replaced


async def outputs(installer: ModelInstaller, name: str) -> tuple[int, np.ndarray]:
    model = installer.registry.get(name)
    result, _, _ = await model.pool.run({"x": X}, None)
    return model.version, result[0]


def reference(seed: int) -> np.ndarray:
    weights = [onnx.numpy_helper.to_array(t) for t in mlp(seed=seed).graph.initializer]
    return np.maximum(X @ weights[0], 0) @ weights[1]


def test_installs_versions_and_serves_the_newest(tmp_path: Path) -> None:
    installer = make_installer(tmp_path)

    async def scenario() -> None:
        assert await install(installer, "m", mlp(seed=0)) == (1, "READY", False)
        version, out = await outputs(installer, "m")
        assert version == 1 and np.allclose(out, reference(0), atol=1e-5)
        assert await install(installer, "m", mlp(seed=1)) == (2, "READY", False)
        version, out = await outputs(installer, "m")
        assert version == 2 and np.allclose(out, reference(1), atol=1e-5)
        with pytest.raises(ServingError):
            installer.registry.get("m", 1)  # retired by the latest-1 policy
        await installer.registry.close()

    run(scenario)
    assert sorted(files_under(tmp_path)) == ["m/1/model.onnx", "m/2/model.onnx"]


def test_existing_version_is_a_conflict_unless_overwritten(tmp_path: Path) -> None:
    installer = make_installer(tmp_path)

    async def scenario() -> None:
        await install(installer, "m", mlp(seed=0), version=3)
        before = files_under(tmp_path)
        with pytest.raises(Conflict, match="overwrite=true"):
            await install(installer, "m", mlp(seed=1), version=3)
        assert files_under(tmp_path) == before
        assert (await outputs(installer, "m"))[0] == 3
        assert await install(installer, "m", mlp(seed=1), version=3, overwrite=True) == (
            3,
            "READY",
            True,
        )
        version, out = await outputs(installer, "m")
        assert version == 3 and np.allclose(out, reference(1), atol=1e-5)
        await installer.registry.close()

    run(scenario)


def test_invalid_model_leaves_nothing_behind(tmp_path: Path) -> None:
    installer = make_installer(tmp_path)

    async def scenario() -> None:
        with pytest.raises(InvalidModel, match="not an ONNX model"):
            await install(installer, "fresh", b"\x08\x01garbage" * 50)
        assert not (tmp_path / "fresh").exists()
        await install(installer, "m", mlp(seed=0))
        before = files_under(tmp_path)
        with pytest.raises(InvalidModel):
            await install(installer, "m", b"\xff" * 100)
        assert files_under(tmp_path) == before
        assert (await outputs(installer, "m"))[0] == 1
        await installer.registry.close()

    run(scenario)


def test_failed_load_is_undone_and_the_old_version_keeps_serving(tmp_path: Path) -> None:
    installer = make_installer(tmp_path)
    fixed = identity(shape=[2, 4])  # valid, but has no batch dimension

    async def scenario() -> None:
        await install(installer, "m", identity(), config=b'{"max_batch_size": 4}')
        before = files_under(tmp_path)
        # The file validates; the load fails because the config asks for batching.
        with pytest.raises(InvalidModel, match="version 2 failed to load: .*max_batch_size"):
            await install(installer, "m", fixed)
        assert files_under(tmp_path) == before
        assert installer.registry.get("m").version == 1
        assert installer.registry.status("m", 2) is None
        # An overwrite of the serving version whose load fails is undone too.
        with pytest.raises(InvalidModel):
            await install(installer, "m", fixed, version=1, overwrite=True)
        assert files_under(tmp_path) == before
        assert installer.registry.get("m").version == 1
        # A brand-new model whose load fails leaves no folder and no status.
        with pytest.raises(InvalidModel):
            await install(installer, "other", fixed, config=b'{"max_batch_size": 2}')
        assert not (tmp_path / "other").exists()
        assert all(s.name != "other" for s in installer.registry.index())
        await installer.registry.close()

    run(scenario)


def test_config_and_labels_are_written_with_the_version(tmp_path: Path) -> None:
    installer = make_installer(tmp_path)

    async def scenario() -> None:
        config = json.dumps({"max_batch_size": 8}).encode()
        await install(installer, "m", mlp(), config=config, labels="a\nb\nc\nd\n")
        model = installer.registry.get("m")
        assert model.max_batch_size == 8 and model.labels == ["a", "b", "c", "d"]
        with pytest.raises(InvalidModel, match="unknown key 'bogus'"):
            await install(installer, "m", mlp(), config=b'{"bogus": 1}')
        await installer.registry.close()

    run(scenario)
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == {"max_batch_size": 8}


def test_delete_version_falls_back_and_delete_model_removes_it(tmp_path: Path) -> None:
    installer = make_installer(tmp_path)

    async def scenario() -> None:
        await install(installer, "m", mlp(seed=0))
        await install(installer, "m", mlp(seed=1))
        await installer.delete_version("m", "2")
        version, out = await outputs(installer, "m")
        assert version == 1 and np.allclose(out, reference(0), atol=1e-5)
        assert not (tmp_path / "m" / "2").exists()
        with pytest.raises(ModelNotFound):
            await installer.delete_version("m", "2")
        await installer.delete_version("m", 1)
        assert installer.registry.live() == []
        await installer.delete_model("m")
        assert not (tmp_path / "m").exists()
        with pytest.raises(ModelNotFound):
            await installer.delete_model("m")
        assert installer.registry.index() == []

    run(scenario)
    assert files_under(tmp_path) == {}


def test_next_free_version_skips_every_numbered_folder(tmp_path: Path) -> None:
    assert next_free_version(tmp_path / "absent") == 1
    write_model(tmp_path, "m", identity(), 2)
    (tmp_path / "m" / "7").mkdir()  # a folder without a model still takes its number
    (tmp_path / "m" / "notes").mkdir()
    assert next_free_version(tmp_path / "m") == 8


def test_staging_cleanup_removes_only_abandoned_entries(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    mine = repo.new_staging_entry()  # this process: a restart under the same pid
    host = mine.name.rsplit("--", 2)[0]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    entries = {
        "dead": tmp_path / ".staging" / f"{host}--{dead}--aaaa",
        "alive": tmp_path / ".staging" / f"{host}--{os.getppid()}--bbbb",
        "other-fresh": tmp_path / ".staging" / "elsewhere--12--cccc",
        "other-old": tmp_path / ".staging" / "elsewhere--13--dddd",
        "foreign": tmp_path / ".staging" / "upload-tmp",
    }
    for entry in entries.values():
        entry.mkdir()
        (entry / "model.onnx").write_bytes(b"partial")
    old = time.time() - 3 * 24 * 3600
    for path in (entries["other-old"] / "model.onnx", entries["other-old"]):
        os.utime(path, (old, old))
    repo.clean_staging()
    left = {p.name for p in (tmp_path / ".staging").iterdir()}
    assert left == {entries["alive"].name, entries["other-fresh"].name}


def test_an_unwritable_repository_is_reported_not_crashed(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    installer = make_installer(tmp_path / "file" / "models")

    async def scenario() -> None:
        with pytest.raises(InsufficientStorage, match="cannot be written"):
            async with installer.stage():
                pass

    run(scenario)
