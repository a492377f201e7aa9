"""The registry of live models: loads, swaps and retires pooled versions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import NoReturn

from app.errors import (
    MemoryBudgetExceeded,
    ModelNotFound,
    ModelNotLoaded,
    ModelNotReady,
    ServingError,
)
from app.metrics import Metrics
from app.optimize.loading import load_served_version, optimization_labels
from app.registry.config import ModelConfig
from app.registry.hooks import LoadReason, NoHooks, RegistryHooks
from app.registry.model import ModelVersion, Runner
from app.registry.providers import cpu_quota
from app.registry.repository import ModelRepository, parse_version, validate_name
from app.registry.status import ON_DEMAND, ModelState, VersionStatus
from app.registry.time_limits import load_in_time
from app.settings import Settings

log = logging.getLogger(__name__)


class ModelRegistry:
    """Live model versions by name; a load builds new pools before retiring old ones."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        metrics: Metrics,
        runner_factory: Callable[[ModelVersion], Runner] | None = None,
    ) -> None:
        self.repository = repository
        # Builds what runs a version's requests, on the event loop, once it has loaded.
        self._runner_factory = runner_factory
        self._settings = settings
        self._metrics = metrics
        self._cpu_quota = settings.cpu_quota or cpu_quota()
        self._live: dict[str, dict[int, ModelVersion]] = {}
        self._status: dict[str, dict[str, VersionStatus]] = {}
        # Versions whose last load failed, by model ("" for the model's own config).
        self._failed: dict[str, set[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: Versions known and selected but not loaded: they load on their next request.
        self._standby: dict[str, set[int]] = {}
        #: The residency policy (``app.registry.residency``), consulted at loads and unloads.
        self.hooks: RegistryHooks = NoHooks()

    # ---- lookups (on the event loop, no awaits) -------------------------------------------

    def get(self, name: str, version: str | int | None = None) -> ModelVersion:
        """The live version asked for, or the newest live one; 404 or 503 otherwise."""
        versions = self._live.get(name)
        if not versions:
            self._raise_missing(name, version)
        if version is None or version == "":
            newest = max(versions)
            standby = self._standby.get(name)
            if standby and max(standby) > newest:
                raise ModelNotLoaded(f"model '{name}' version {max(standby)} is not loaded")
            return versions[newest]
        number = parse_version(version)
        found = versions.get(number)
        if found is None:
            self._raise_missing(name, number)
        return found

    def _raise_missing(self, name: str, version: str | int | None) -> NoReturn:
        statuses = self._status.get(name, {})
        status = statuses.get(str(version)) if version is not None else None
        if status is None and version is None and statuses:
            status = next(iter(statuses.values()))
        label = f"model '{name}'" + (f" version {version}" if version is not None else "")
        standby = self._standby.get(name)
        if standby and (not version or str(version) in {str(v) for v in standby}):
            # Standing by, or loading on demand: the request waits for that load.
            raise ModelNotLoaded(f"{label} is not loaded; it loads on an inference request")
        if status is not None and status.state == ModelState.LOADING:
            raise ModelNotReady(f"{label} is loading")
        if status is not None and status.state == ModelState.UNAVAILABLE:
            raise ModelNotReady(f"{label} is unavailable: {status.reason}")
        if status is not None and status.state == ModelState.UNLOADED:
            raise ModelNotReady(f"{label} is unloaded")
        # Triton's words, which its clients and tools match on.
        which = f"'{name}'" + (f" version {version}" if version is not None else "")
        raise ModelNotFound(f"Request for unknown model: {which} is not found")

    def live(self) -> list[ModelVersion]:
        """Every live version, by name then version."""
        return [self._live[n][v] for n in sorted(self._live) for v in sorted(self._live[n])]

    def is_ready(self, name: str, version: str | int | None = None) -> bool:
        """Whether a request would be served: the version is live, or loads on demand."""
        try:
            self.get(name, version)
        except ModelNotLoaded:
            return True
        except ServingError:
            return False
        return True

    def serves(self, name: str) -> bool:
        """Whether some version of ``name`` is live or waits to load on demand."""
        return bool(self._live.get(name) or self._standby.get(name))

    def index(self) -> list[VersionStatus]:
        """Every model in the repository or the registry, with its state and reason."""
        names = set(self.repository.model_names()) | set(self._status)
        out: list[VersionStatus] = []
        for name in sorted(names):
            statuses = self._status.get(name)
            if not statuses:
                out.append(VersionStatus(name, "", ModelState.UNLOADED))
                continue
            out.extend(statuses[v] for v in sorted(statuses, key=_version_key))
        return out

    # ---- lifecycle -------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def load_all(self) -> None:
        """Load every model in the repository; failures are recorded, never raised.

        Models load a few at a time, so that one whose load takes long (up to its time
        limit) holds up none of the others.
        """
        slots = asyncio.Semaphore(max(2, min(4, self._cpu_quota)))

        async def load_one(name: str) -> None:
            async with slots:
                try:
                    await self.load(name, LoadReason.STARTUP)
                except ServingError as exc:
                    log.error("model %s failed to load: %s", name, exc.message)

        await asyncio.gather(*(load_one(name) for name in self.repository.model_names()))

    async def load(self, name: str, reason: LoadReason = LoadReason.RELOAD) -> list[ModelVersion]:
        """(Re)load the versions of ``name`` its policy selects; the old ones serve until the
        new ones are ready, and a version that fails keeps its previous pool if it had one.

        Selected versions that the residency policy defers wait, AVAILABLE, for a request.
        """
        validate_name(name)
        async with self._lock(name):
            try:
                config = self.repository.config(name)
                versions = self.repository.select_versions(name, config.version_policy)
                labels = self.repository.labels(name)
            except ServingError as exc:
                # A model already serving keeps its status; a broken new one shows why (a name
                # that is not in the repository leaves no trace).
                if not isinstance(exc, ModelNotFound):
                    self._record_failures(name, {""})
                    if not self._live.get(name):
                        self._status[name] = {
                            "": VersionStatus(name, "", ModelState.UNAVAILABLE, exc.message)
                        }
                        self._standby.pop(name, None)
                raise
            if not versions:
                self._record_failures(name, {""})
                self._standby.pop(name, None)
                self._status[name] = {
                    "": VersionStatus(name, "", ModelState.UNAVAILABLE, "no versions on disk")
                }
                raise ModelNotFound(f"model '{name}' has no versions with a model.onnx")
            old = dict(self._live.get(name, {}))
            eager = self.hooks.eager_versions(config, reason, versions, old)
            standby = {v for v in versions if v not in eager}
            statuses = {str(v): VersionStatus(name, str(v), ModelState.LOADING) for v in eager}
            statuses.update(
                {
                    str(v): VersionStatus(name, str(v), ModelState.AVAILABLE, ON_DEMAND)
                    for v in standby
                }
            )
            self._status[name] = {**statuses}
            new: dict[int, ModelVersion] = {}
            errors: list[str] = []
            failures: list[ServingError] = []
            failed: set[str] = set()
            for v in eager:
                try:
                    model = await self._load_version(name, v, config, labels, reason)
                except ServingError as exc:
                    # No room in the memory budget now: a request may find some later.
                    no_room = isinstance(exc, MemoryBudgetExceeded)
                    what = "not loaded" if no_room else "failed to load"
                    log.error("model %s v%d %s: %s", name, v, what, exc.message)
                    errors.append(f"v{v}: {exc.message}")
                    failures.append(exc)
                    if not no_room:
                        failed.add(str(v))
                    if v in old:
                        new[v] = old[v]
                        statuses[str(v)] = VersionStatus(
                            name, str(v), ModelState.READY,
                            f"reload failed, the previous load keeps serving: {exc.message}",
                        )  # fmt: skip
                    elif no_room:
                        standby.add(v)
                        statuses[str(v)] = VersionStatus(
                            name, str(v), ModelState.AVAILABLE, ON_DEMAND
                        )
                    else:
                        statuses[str(v)] = VersionStatus(
                            name, str(v), ModelState.UNAVAILABLE, exc.message
                        )
                    continue
                new[v] = model
                statuses[str(v)] = VersionStatus(name, str(v), ModelState.READY)
            if not new and old and eager:
                # Nothing new loaded: the previous versions keep serving.
                new = old
                for v in old:
                    statuses[str(v)] = VersionStatus(name, str(v), ModelState.READY)
            self._status[name] = statuses
            if new:
                self._live[name] = new
            else:
                self._live.pop(name, None)
            self._set_standby(name, standby)
            retired = [m for v, m in old.items() if new.get(v) is not m]
            await self._retire(retired)
            self._record_failures(name, failed)
            if failures:
                kept = " (the versions already serving keep serving)" if new else ""
                error = type(failures[0])(f"failed to load '{name}': {'; '.join(errors)}{kept}")
                raise error
            return [new[v] for v in sorted(new)]

    async def _load_version(
        self,
        name: str,
        version: int,
        config: ModelConfig,
        labels: list[str] | None,
        reason: LoadReason,
    ) -> ModelVersion:
        """Build one version's pool and runner (admitted and measured by the hooks)."""
        load = partial(
            load_served_version,
            name,
            version,
            self.repository.model_file(name, version),
            config,
            model_dir=self.repository.model_dir(name),
            default_providers=self._settings.default_providers,
            require_accelerator=self._settings.require_accelerator,
            cpu_quota=self._cpu_quota,
            labels=labels,
        )
        async with self.hooks.loading(name, version, config, reason) as loading:
            # Within time limits, on a thread of its own (app/registry/time_limits.py).
            model = await load_in_time(
                self._settings,
                f"model {name} v{version}",
                config,
                lambda deadline: loading.build(partial(load, deadline=deadline)),
            )
            await loading.loaded(model)
        if self._runner_factory is not None:
            model.runner = self._runner_factory(model)
        self._metrics.live_sessions.update(model.pool.sessions)
        self._metrics.model_loaded(
            name,
            str(version),
            model.provider,
            model.load_seconds,
            ",".join(model.fallback) if model.fallback else None,
        )
        self._metrics.model_optimization(name, str(version), *optimization_labels(model), True)
        log.info(
            "model %s v%d ready on %s in %.3fs (%s)",
            name, version, model.provider, model.load_seconds, reason.value,
        )  # fmt: skip
        return model

    async def load_on_demand(self, name: str, version: int | None) -> ModelVersion:
        """Load one AVAILABLE version (None: the newest) beside the live ones, unless it is
        live already; a failure other than the memory budget makes it UNAVAILABLE."""
        async with self._lock(name):
            live = self._live.get(name, {})
            standby = self._standby.get(name, set())
            target = version if version is not None else max({*live, *standby}, default=None)
            if target is not None and target in live:
                return live[target]
            if target is None or target not in standby:
                self._raise_missing(name, version)
            statuses = self._status.setdefault(name, {})
            try:
                config = self.repository.config(name)
                labels = self.repository.labels(name)
                statuses[str(target)] = VersionStatus(name, str(target), ModelState.LOADING)
                model = await self._load_version(name, target, config, labels, LoadReason.DEMAND)
            except MemoryBudgetExceeded:
                statuses[str(target)] = VersionStatus(
                    name, str(target), ModelState.AVAILABLE, ON_DEMAND
                )
                raise
            except ServingError as exc:
                log.error("model %s v%d failed to load: %s", name, target, exc.message)
                statuses[str(target)] = VersionStatus(
                    name, str(target), ModelState.UNAVAILABLE, exc.message
                )
                self._set_standby(name, standby - {target})
                self._record_failures(name, self._failed.get(name, set()) | {str(target)})
                raise
            except BaseException:
                statuses[str(target)] = VersionStatus(
                    name, str(target), ModelState.AVAILABLE, ON_DEMAND
                )
                raise
            self._live.setdefault(name, {})[target] = model
            statuses[str(target)] = VersionStatus(name, str(target), ModelState.READY)
            self._set_standby(name, standby - {target})
            return model

    async def evict(self, name: str, version: int) -> ModelVersion | None:
        """Unload an idle live version to make room; it turns AVAILABLE. None (and nothing
        done) when it is busy, gone, or its model is being loaded or changed."""
        lock = self._lock(name)
        if lock.locked():
            return None
        async with lock:
            versions = self._live.get(name, {})
            model = versions.get(version)
            if model is None or model.pool.in_use:
                return None
            del versions[version]
            if not versions:
                self._live.pop(name, None)
            self._status.setdefault(name, {})[str(version)] = VersionStatus(
                name, str(version), ModelState.AVAILABLE, ON_DEMAND
            )
            self._set_standby(name, self._standby.get(name, set()) | {version})
            await self._retire([model])
            return model

    def _set_standby(self, name: str, versions: set[int]) -> None:
        if versions:
            self._standby[name] = versions
        else:
            self._standby.pop(name, None)

    async def unload(self, name: str, version: int | None = None) -> None:
        """Stop serving ``name`` (or one version); in-flight requests finish first."""
        validate_name(name)
        async with self._lock(name):
            live = self._live.get(name, {})
            if not live and name not in self._status:
                raise ModelNotFound(f"model '{name}' is not loaded")
            standby = self._standby.get(name, set())
            targets = [version] if version is not None else [*live, *standby]
            retired = [live.pop(v) for v in targets if v in live]
            self._set_standby(name, standby - set(targets))
            if not live:
                self._live.pop(name, None)
            statuses = self._status.setdefault(name, {})
            for v in targets:
                statuses[str(v)] = VersionStatus(name, str(v), ModelState.UNLOADED)
            self._clear_failures(name, None if version is None else str(version))
            statuses.pop("", None)
            await self._retire(retired)

    def status(self, name: str, version: int) -> VersionStatus | None:
        """The recorded state of one version, if the registry has tried it."""
        return self._status.get(name, {}).get(str(version))

    def forget(self, name: str, version: int | None = None) -> None:
        """Drop a model's (or a version's) status after it left the disk."""
        if version is None:
            self._status.pop(name, None)
            self._standby.pop(name, None)
        else:
            self._status.get(name, {}).pop(str(version), None)
            self._set_standby(name, self._standby.get(name, set()) - {version})
        self._clear_failures(name, None if version is None else str(version))

    def _record_failures(self, name: str, failed: set[str]) -> None:
        """Mark the versions (``""``: the model's config) whose last load failed, and clear
        the marks of the others: they loaded, or are no longer asked for."""
        before = self._failed.get(name, set())
        for version in before - failed:
            self._metrics.model_load_failed(name, version, False)
        for version in failed - before:
            self._metrics.model_load_failed(name, version, True)
        if failed:
            self._failed[name] = failed
        else:
            self._failed.pop(name, None)

    def _clear_failures(self, name: str, version: str | None) -> None:
        """Clear the marks of a model (or one version) taken away on purpose."""
        before = self._failed.get(name, set())
        cleared = before if version is None else before & {version}
        self._record_failures(name, before - cleared)

    async def _retire(self, models: list[ModelVersion]) -> None:
        for model in models:
            current = self._live.get(model.name, {}).get(model.version)
            if current is None or current.provider != model.provider:
                # A reload of the same version on the same provider keeps its ready gauge.
                self._metrics.model_unloaded(model.name, str(model.version), model.provider)
            if current is None or optimization_labels(current) != optimization_labels(model):
                self._metrics.model_optimization(
                    model.name, str(model.version), *optimization_labels(model), False
                )
            await asyncio.to_thread(model.pool.retire, self._settings.shutdown_grace_seconds)
            if model.runner is not None:
                await model.runner.close()
            self.hooks.unloaded(model)

    async def close(self) -> None:
        """Retire every pool (waits for in-flight runs)."""
        for name in list(self._live):
            await self.unload(name)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)
