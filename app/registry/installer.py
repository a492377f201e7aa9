"""Atomic installs and removals of model versions in the repository, each followed by a load.

Every write lands in a staging folder inside the repository first (same filesystem), is
fsynced and validated, and only then is moved into place with a rename or a hard link, so a
crash at any moment leaves either the old state or the new one on disk, never half a version.
An install whose load fails is undone: its files leave and the versions serving keep serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from app.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    InvalidModel,
    ModelNotFound,
    ServingError,
)
from app.optimize.uploads import optimize_staged
from app.registry.atomic_files import Undo, fsync_dir, keep_copy, link_new, write_durably
from app.registry.config import ModelConfig
from app.registry.hooks import LoadReason
from app.registry.install_plan import InstalledVersion, InstallPlan, Stage, VersionFile
from app.registry.model import ModelVersion
from app.registry.registry import ModelRegistry
from app.registry.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    VERSION_PATTERN,
    parse_config,
    parse_version,
    validate_name,
)
from app.registry.status import ModelState
from app.registry.time_limits import Deadline, run_step
from app.registry.validation import ModelSignature, validate_model_file
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_VERSION = 10**18 - 1  # the most digits a version may have (see VERSION_PATTERN)


def next_free_version(model_dir: Path) -> int:
    """One more than the highest numbered folder (files or not) of the model."""
    if not model_dir.is_dir():
        return 1
    numbers = [int(p.name) for p in model_dir.iterdir() if VERSION_PATTERN.fullmatch(p.name)]
    return max(numbers, default=0) + 1


class ModelInstaller:
    """Installs and deletes model versions and keeps the registry in step with the disk."""

    def __init__(self, registry: ModelRegistry, settings: Settings | None = None) -> None:
        self.registry = registry
        limits = settings if settings is not None else Settings.model_construct()
        #: Seconds a model file's checks, and its test run, may take.
        self.check_seconds = limits.model_load_timeout_seconds
        self.run_seconds = limits.model_warmup_timeout_seconds
        self.repository = registry.repository
        self._locks: dict[str, asyncio.Lock] = {}
        #: Called (under the model's lock) after this installer changed a model on disk.
        self.on_change: Callable[[str], None] | None = None

    def lock(self, name: str) -> asyncio.Lock:
        """The lock serialising every disk change and (re)load of one model."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _changed(self, name: str) -> None:
        if self.on_change is not None:
            self.on_change(name)

    @asynccontextmanager
    async def stage(self) -> AsyncIterator[Stage]:
        """A staging folder, removed (with whatever is left in it) when the block ends."""
        try:
            directory = await asyncio.to_thread(self.repository.new_staging_entry)
        except OSError as exc:
            raise InsufficientStorage(
                f"the model repository cannot be written: {exc.strerror}"
            ) from None
        try:
            yield Stage(directory)
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)

    # ---- checks that need no file ------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        directory = self.repository.model_dir(validate_name(name))
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            raise Conflict(f"'{name}' exists in the repository but is not a model folder")
        return directory

    def precheck(self, name: str, version: int | None, overwrite: bool) -> None:
        """Refuse a bad name or an existing version before any file is received."""
        self._model_dir(name)
        if version is not None and not overwrite:
            if (self.repository.version_dir(name, version) / MODEL_FILE).exists():
                raise Conflict(
                    f"model '{name}' already has version {version}; "
                    "pass overwrite=true to replace it"
                )

    # ---- install -----------------------------------------------------------------------------

    async def install(self, stage: Stage, plan: InstallPlan) -> list[InstalledVersion]:
        """Validate the staged files, move them into place and load; undo it all on failure."""
        name = validate_name(plan.name)
        if plan.config is not None:
            parse_config(plan.config)
        for item in plan.files:
            if item.version is not None:
                parse_version(item.version)
        signatures = [await self._validated(f.path) for f in plan.files]
        if plan.optimize is not None:
            optimized = await self._optimized(stage, plan)
            plan = replace(plan, files=[*plan.files, optimized])
            signatures.append(await self._validated(optimized.path))
        async with self.lock(name):
            before = self._live_versions(name)
            undo, placed = await asyncio.to_thread(self._place, stage, plan)
            self._changed(name)
            try:
                failure = await self._load_installed(
                    name, [v for v, _ in placed], plan.config is not None, before
                )
            except BaseException:
                await asyncio.to_thread(undo.revert)
                self._changed(name)
                raise
            if failure is not None:
                await asyncio.to_thread(undo.revert)
                for version, replaced in placed:
                    if not replaced:
                        self.registry.forget(name, version)
                if undo.created_model_dir:
                    self.registry.forget(name)
                self._changed(name)
                raise InvalidModel(failure)
            results = []
            for (version, replaced), signature, item in zip(
                placed, signatures, plan.files, strict=True
            ):
                state, reason = self._state_of(name, version)
                results.append(
                    InstalledVersion(
                        name, version, state, reason, replaced, signature, item.optimization
                    )
                )
            return results

    async def _validated(self, path: Path) -> ModelSignature:
        """The checks of a staged model file, within time limits, on a thread of its own."""
        deadline = Deadline(self.run_seconds, "the test run of the model")
        return await run_step(
            "checking the model",
            self.check_seconds + self.run_seconds,
            validate_model_file,
            path,
            deadline,
            stops=deadline,
        )

    async def _optimized(self, stage: Stage, plan: InstallPlan) -> VersionFile:
        """The plan's one file optimised in the stage (off the event loop; the model's
        lock is not held meanwhile, so its other changes and loads go on)."""
        assert plan.optimize is not None
        if len(plan.files) != 1:
            raise BadRequest("optimize takes exactly one model file")
        name = plan.name
        if plan.config is not None:
            config = parse_config(plan.config)
        elif self.repository.has_model(name):
            config = self.repository.config(name)
        else:
            config = ModelConfig()
        labelled = plan.labels is not None or (
            self.repository.has_model(name) and self.repository.labels(name) is not None
        )
        # The step kills its worker process at its own limit; the thread that waits for it
        # is one of its own, never the event loop's executor.
        staged = await run_step(
            f"optimising model {name}",
            plan.optimize.timeout_seconds + self.check_seconds,
            optimize_staged,
            stage.path("optimized"),
            name,
            plan.files[0].path,
            plan.optimize,
            config,
            labelled,
            self.repository.model_dir(name),
        )
        return VersionFile(staged.model, None, staged.extras, staged.report)

    def _live_versions(self, name: str) -> dict[int, ModelVersion]:
        return {m.version: m for m in self.registry.live() if m.name == name}

    def _state_of(self, name: str, version: int) -> tuple[str, str]:
        status = self.registry.status(name, version)
        if status is None:
            return ModelState.UNLOADED.value, "not selected by the model's version policy"
        return status.state.value, status.reason

    async def _load_installed(
        self,
        name: str,
        placed: list[int],
        new_config: bool,
        before: dict[int, ModelVersion],
    ) -> str | None:
        """Load the model; the reason the install must be undone, or None when it took.

        The placed versions the policy serves must each be live on a new pool; with a new
        config, every version the policy serves must be.
        """
        config = self.repository.config(name)
        selected = self.repository.select_versions(name, config.version_policy)
        must_load = selected if new_config else [v for v in placed if v in selected]
        try:
            await self.registry.load(name, LoadReason.UPLOAD)
        except ServingError as exc:
            message = exc.message
        else:
            message = ""
        after = self._live_versions(name)
        for version in must_load:
            live = after.get(version)
            if live is None or live is before.get(version):
                status = self.registry.status(name, version)
                reason = status.reason if status is not None and status.reason else message
                return f"model '{name}' version {version} failed to load: {reason}"
        return None

    def _place(self, stage: Stage, plan: InstallPlan) -> tuple[Undo, list[tuple[int, bool]]]:
        """Move the staged files into the repository (blocking); returns how to undo it."""
        name = plan.name
        model_dir = self._model_dir(name)
        for item in plan.files:
            if item.version is not None:
                self.precheck(name, item.version, plan.overwrite)
        undo = Undo(model_dir)
        if not model_dir.exists():
            model_dir.mkdir(parents=True)
            undo.created_model_dir = True
            fsync_dir(model_dir.parent)
        try:
            if plan.config is not None:
                self._replace_file(stage, model_dir / CONFIG_FILE, plan.config, undo)
            if plan.labels is not None:
                self._replace_file(stage, model_dir / LABELS_FILE, plan.labels.encode(), undo)
            placed = [self._place_version(stage, plan, item, undo) for item in plan.files]
            fsync_dir(model_dir)
        except BaseException:
            undo.revert()
            raise
        return undo, placed

    def _replace_file(self, stage: Stage, target: Path, data: bytes, undo: Undo) -> None:
        staged = stage.path(f"new-{target.name}")
        write_durably(staged, data)
        previous = None
        if target.is_file():
            previous = stage.path(f"previous-{target.name}")
            keep_copy(target, previous)
        os.replace(staged, target)
        undo.files.append((target, previous))

    def _place_version(
        self, stage: Stage, plan: InstallPlan, item: VersionFile, undo: Undo
    ) -> tuple[int, bool]:
        model_dir = undo.model_dir
        version = item.version
        if version is None:
            # Claim the next number with an exclusive mkdir: replicas sharing the
            # repository cannot both take it.
            version = next_free_version(model_dir)
            while True:
                if version > MAX_VERSION:
                    raise Conflict(f"model '{plan.name}' has no version numbers left")
                try:
                    (model_dir / str(version)).mkdir()
                    break
                except FileExistsError:
                    version += 1
            undo.created_dirs.append(model_dir / str(version))
        name = plan.name
        version_dir = self.repository.version_dir(name, version)
        if not version_dir.exists():
            version_dir.mkdir()
            undo.created_dirs.append(version_dir)
        target = version_dir / MODEL_FILE
        if target.exists() and plan.overwrite:
            previous = stage.path(f"previous-{version}-{MODEL_FILE}")
            keep_copy(target, previous)
            os.replace(item.path, target)
            undo.files.append((target, previous))
            replaced = True
        else:
            try:
                link_new(item.path, target)
            except FileExistsError:
                raise Conflict(
                    f"model '{name}' already has version {version}; "
                    "pass overwrite=true to replace it"
                ) from None
            undo.files.append((target, None))
            replaced = False
        for relative, staged in item.extras:
            extra = version_dir / relative
            for folder in reversed(extra.relative_to(version_dir).parents[:-1]):
                if not (version_dir / folder).exists():
                    (version_dir / folder).mkdir()
                    undo.created_dirs.append(version_dir / folder)
            link_new(staged, extra)
            undo.files.append((extra, None))
        fsync_dir(version_dir)
        return version, replaced

    # ---- delete ------------------------------------------------------------------------------

    async def delete_model(self, name: str) -> None:
        """Stop serving the model, then remove its folder once in-flight requests drained."""
        name = validate_name(name)
        async with self.lock(name):
            directory = self.repository.model_dir(name)
            if directory == self.repository.root:
                raise Conflict("this repository holds a single model: delete its versions")
            on_disk = directory.is_dir() and not directory.is_symlink()
            known = any(s.name == name for s in self.registry.index())
            if not on_disk and not known:
                raise ModelNotFound(f"model '{name}' is not in the repository")
            async with self.stage() as stage:
                if on_disk:
                    # Off its path at once (atomic); the files go when the stage is removed.
                    await asyncio.to_thread(self._move_out, directory, stage.path("removed"))
                await self._unload_quietly(name, None)
                self.registry.forget(name)
                self._changed(name)

    async def delete_version(self, name: str, version: str | int) -> None:
        """Remove one version: the policy's next choice loads first, then the old one drains."""
        name = validate_name(name)
        number = parse_version(version)
        async with self.lock(name):
            directory = self.repository.version_dir(name, number)
            if directory == self.repository.root:
                raise Conflict("this version is the repository itself and cannot be deleted")
            if not (directory / MODEL_FILE).is_file() or directory.is_symlink():
                raise ModelNotFound(f"model '{name}' has no version {number}")
            was_served = self.registry.serves(name)
            async with self.stage() as stage:
                await asyncio.to_thread(self._move_out, directory, stage.path("removed"))
                remaining = self.repository.versions(name)
                if was_served and remaining:
                    try:
                        await self.registry.load(name)
                    except ServingError as exc:
                        log.warning("model %s after deleting v%d: %s", name, number, exc.message)
                if number in self._live_versions(name) or not remaining:
                    await self._unload_quietly(name, None if not remaining else number)
                self.registry.forget(name, number)
                if not remaining:
                    self.registry.forget(name)
                self._changed(name)

    async def _unload_quietly(self, name: str, version: int | None) -> None:
        try:
            await self.registry.unload(name, version)
        except ModelNotFound:
            pass

    @staticmethod
    def _move_out(source: Path, target: Path) -> None:
        os.rename(source, target)
        fsync_dir(source.parent)
