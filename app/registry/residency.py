"""Which model versions stay in memory: loads on demand, a memory budget, LRU eviction.

The registry calls this policy's hooks (``app.registry.hooks``) around its loads and unloads;
the data plane calls ``load_on_demand`` for a request whose model is not loaded. Nothing else
branches on it.

- A model whose config says ``"load": "on_demand"`` (or every model that says nothing, with
  the server's ``LOAD_ON_DEMAND``) is not loaded at start: its versions stand by, AVAILABLE,
  and the first request for one loads it. However many requests arrive meanwhile there is one
  load (a single flight per version asked for); each request waits for it within its own
  timeout, and a request whose timeout runs out leaves the load going for the next ones.
- Every load is measured (``app.registry.memory``) and counted in the ledger
  (``app.registry.budget``). With a budget, loads are taken one at a time, so that each one's
  growth of resident memory is its own, and a load that would go over it first evicts the
  least recently used versions that are idle (no request in flight or queued), unpinned, and
  not being loaded or waited for. When only versions in use stand in the way, it waits up to
  ``BUSY_WAIT_SECONDS`` for them to become idle; when that cannot make room the load fails
  with 503 and Retry-After, and the versions serving keep serving.
- An evicted version stands by like an on-demand one: its next request loads it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from functools import partial

from app.errors import (
    LoadTimeout,
    MemoryBudgetExceeded,
    ModelNotFound,
    ModelNotReady,
    ServingError,
)
from app.metrics import Metrics
from app.registry.budget import MemoryLedger, VersionFiles, device_name, mib
from app.registry.config import ModelConfig
from app.registry.hooks import Loading, LoadReason
from app.registry.memory import (
    HOST,
    GpuMemory,
    LoadMeasurement,
    MemoryCost,
    budget_bytes,
    memory_limit,
    release_free_memory,
    start_runtime,
)
from app.registry.model import ModelVersion
from app.registry.providers import CUDA, usable_providers
from app.registry.registry import ModelRegistry
from app.registry.repository import parse_version
from app.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a client is asked to wait after a 503 for want of memory (in-flight requests
#: usually end within that, leaving versions idle to evict).
RETRY_AFTER_SECONDS = 1.0
#: How long a load waits for versions in use to become idle before it gives up, and how
#: often it looks (requests to small models end within milliseconds).
BUSY_WAIT_SECONDS = 1.0
BUSY_POLL_SECONDS = 0.005

FlightKey = tuple[str, int | None]


def budgets_from(settings: Settings, gpus: GpuMemory) -> dict[str, int]:
    """The budget of each kind of memory, this worker's share of it."""
    budgets: dict[str, int] = {}
    host = budget_bytes(settings.memory_budget, memory_limit(), settings.workers)
    if host is not None:
        budgets[HOST] = host
    for device, total in gpus.totals().items():
        gpu = budget_bytes(settings.gpu_memory_budget, total, settings.workers)
        if gpu is not None:
            budgets[device] = gpu
    return budgets


class Residency:
    """The registry's residency policy (its ``hooks``) and the loads on demand."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        metrics: Metrics,
        gpus: GpuMemory | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics.residency
        self._on_demand = settings.load_on_demand
        self._default_timeout_us = settings.default_timeout_us
        self.gpus = gpus if gpus is not None else GpuMemory.open()
        self.ledger = MemoryLedger(budgets_from(settings, self.gpus))
        for device, budget in self.ledger.budgets.items():
            self._metrics.budget.labels(device).set(budget)
            self._metrics.accounted.labels(device).set(0)
            log.info("memory budget: %s of %s memory", mib(budget), device_name(device))
        self._runtime_started = False
        # Created on the event loop, at the first load.
        self._slot: asyncio.Lock | None = None
        self._flights: dict[FlightKey, asyncio.Future[ModelVersion]] = {}
        # Models that requests wait for: their versions are not evicted meanwhile.
        self._waiting: Counter[str] = Counter()

    # ---- policy ----------------------------------------------------------------------------

    def loads_on_demand(self, config: ModelConfig) -> bool:
        return config.load == "on_demand" or (config.load is None and self._on_demand)

    def eager_versions(
        self, config: ModelConfig, reason: LoadReason, selected: list[int], live: Collection[int]
    ) -> list[int]:
        """Uploads and cold starts load what they ask for. A model loading on demand loads
        nothing at start or on a change while none of it is loaded; while some is, a change
        reloads those versions and the newest selected one (so requests go on being served
        by the old pool until the new one is ready)."""
        if reason in (LoadReason.UPLOAD, LoadReason.DEMAND) or not self.loads_on_demand(config):
            return selected
        if not selected or not live:
            return []
        return sorted({v for v in selected if v in live} | {max(selected)})

    # ---- loads -----------------------------------------------------------------------------

    def _one_at_a_time(self) -> AbstractAsyncContextManager[object]:
        if not self.ledger.enforced:
            return nullcontext()
        if self._slot is None:
            self._slot = asyncio.Lock()
        return self._slot

    @asynccontextmanager
    async def loading(
        self, name: str, version: int, config: ModelConfig, reason: LoadReason
    ) -> AsyncIterator[Loading]:
        """Admit one load: room is made for its estimated cost first (503 when there can be
        none); the load then accounts for what it measured."""
        async with self._one_at_a_time():
            # A stat or two of one folder: not worth a hop to a thread.
            files = VersionFiles.read(self._registry.repository.version_dir(name, version))
            estimate, measured = self.ledger.estimate(name, version, files)
            # A guess only makes what room it can: the load's measurement decides.
            await self._make_room(estimate, name, version, required=measured)
            yield _Load(self, partial(self._admit, config=config, reason=reason, files=files))

    def before_measuring(self) -> None:
        """Start onnxruntime (once) and hand freed memory back, so that neither counts for
        the load measured next (blocking)."""
        if not self._runtime_started:
            start_runtime(cuda=bool(self.gpus.totals()) and CUDA in usable_providers())
            self._runtime_started = True
        release_free_memory()

    async def _admit(
        self,
        model: ModelVersion,
        measured: MemoryCost,
        *,
        config: ModelConfig,
        reason: LoadReason,
        files: VersionFiles,
    ) -> None:
        cost = self.ledger.account(model, files, measured)
        model.used_at = time.monotonic()
        model.extras["memory"] = cost.as_dict()
        model.extras["residency"] = {
            "load": "on_demand" if self.loads_on_demand(config) else "startup",
            "pinned": config.pinned,
            "loaded_by": reason.value,
        }
        try:
            # Measured above the estimate: evict more, or give this load up.
            await self._make_room(MemoryCost(), model.name, model.version, cost)
        except MemoryBudgetExceeded:
            self.ledger.remove(model)
            await asyncio.to_thread(model.pool.retire, 0)
            raise
        self._metrics.loaded(model.name, str(model.version), reason.value, cost.amounts)
        self._update_accounted()

    def unloaded(self, model: ModelVersion) -> None:
        resident = self.ledger.remove(model)
        if resident is None:
            return
        if not self.ledger.counts(model.name, model.version):
            self._metrics.unloaded(model.name, str(model.version), list(resident.cost.amounts))
        self._update_accounted()

    def _update_accounted(self) -> None:
        if self.ledger.enforced:
            for device, used in self.ledger.used().items():
                self._metrics.accounted.labels(device).set(used)

    # ---- eviction --------------------------------------------------------------------------

    async def _make_room(
        self,
        extra: MemoryCost,
        name: str,
        version: int,
        need: MemoryCost | None = None,
        *,
        required: bool = True,
    ) -> None:
        """Evict until ``extra`` more fits every budget; MemoryBudgetExceeded when it cannot
        (or, not ``required``, evict the idle versions it can and stop).

        ``need`` is what the version takes (default ``extra``; a version already counted
        needs room for itself with nothing extra).
        """
        if not self.ledger.enforced:
            return
        need = need if need is not None else extra
        impossible = self.ledger.too_large(need)
        if impossible is not None:
            raise MemoryBudgetExceeded(
                f"model '{name}' version {version} cannot be loaded: {impossible}"
            )
        tried: set[int] = set()
        deadline = time.monotonic() + BUSY_WAIT_SECONDS
        while short := self.ledger.shortfall(extra):
            victim = self._victim(short, name, tried)
            if victim is None and not required:
                return
            if victim is None:
                if not self._could_free(short, name) or time.monotonic() >= deadline:
                    raise MemoryBudgetExceeded(
                        self._no_room(name, version, need, short), retry_after=RETRY_AFTER_SECONDS
                    )
                # Only versions in use stand in the way: their requests end soon.
                await asyncio.sleep(BUSY_POLL_SECONDS)
                tried.clear()
                continue
            tried.add(id(victim))
            evicted = await self._registry.evict(victim.name, victim.version)
            if evicted is not None:
                self._metrics.evicted(victim.name, str(victim.version))
                log.info(
                    "evicted model %s v%d (idle for %.1fs) to make room for %s v%d",
                    victim.name, victim.version, time.monotonic() - victim.used_at, name, version,
                )  # fmt: skip

    def _victim(self, short: dict[str, int], loading: str, tried: set[int]) -> ModelVersion | None:
        """The least recently used version that may be evicted and frees memory where some
        is missing."""
        for resident in self.ledger.by_last_use():
            model = resident.model
            if (
                id(model) in tried
                or model.name == loading
                or model.config.pinned
                or model.pool.in_use
                or self._waiting[model.name]
                or not any(resident.cost.amounts.get(d, 0) for d in short)
            ):
                continue
            return model
        return None

    def _could_free(self, short: dict[str, int], loading: str) -> bool:
        """Whether evicting every unpinned version (busy ones included) would make room."""
        freeable: dict[str, int] = {}
        for resident in self.ledger.by_last_use():
            model = resident.model
            if model.name != loading and not model.config.pinned:
                for device, size in resident.cost.amounts.items():
                    freeable[device] = freeable.get(device, 0) + size
        return all(freeable.get(device, 0) >= missing for device, missing in short.items())

    def _no_room(self, name: str, version: int, need: MemoryCost, short: dict[str, int]) -> str:
        device = next(iter(short))
        budget = self.ledger.budgets[device]
        others = self.ledger.used().get(device, 0) - self.ledger.counted(name, version, device)
        return (
            f"no room to load model '{name}' version {version}: it takes about "
            f"{mib(need.amounts.get(device, 0))} and the {device_name(device)} memory budget of "
            f"{mib(budget)} holds {mib(others)} of model versions that are pinned, in use or "
            "loading; retry later"
        )

    # ---- loads on demand -------------------------------------------------------------------

    async def load_on_demand(self, name: str, version: str | None, timeout_us: int | None) -> None:
        """Wait, within ``timeout_us`` (None: the server's default; 0: no limit), until the
        version asked for (None: the newest) is loaded; one load serves every waiter."""
        number = None if version is None or version == "" else parse_version(version)
        key = (name, number)
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._registry.load_on_demand(name, number))
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        timeout = self._default_timeout_us if timeout_us is None else timeout_us
        self._waiting[name] += 1
        try:
            # Shielded: a request that gives up leaves the load going for the next ones.
            await asyncio.wait_for(asyncio.shield(flight), timeout / 1e6 if timeout else None)
        except TimeoutError:
            raise LoadTimeout(
                f"model '{name}' was loading on demand and was not ready within the request's "
                f"timeout of {timeout} us; it goes on loading: retry"
            ) from None
        except (MemoryBudgetExceeded, ModelNotFound, ModelNotReady):
            raise
        except ServingError as exc:
            # The model's fault (an invalid file, say), not the request's.
            raise ModelNotReady(f"model '{name}' could not be loaded: {exc.message}") from None
        finally:
            self._waiting[name] -= 1
            if not self._waiting[name]:
                del self._waiting[name]

    async def close(self) -> None:
        """Stop the loads on demand in progress (at shutdown, before the registry closes)."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    def _landed(self, key: FlightKey, flight: asyncio.Future[ModelVersion]) -> None:
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved: waiters that gave up never read it


class _Load:
    """One admitted load: measures what the version took while it is built, then admits it."""

    def __init__(
        self,
        residency: Residency,
        admit: Callable[[ModelVersion, MemoryCost], Awaitable[None]],
    ) -> None:
        self._residency = residency
        self._admit = admit
        self._cost = MemoryCost()

    def build(self, load: Callable[[], ModelVersion]) -> ModelVersion:
        self._residency.before_measuring()
        measurement = LoadMeasurement(self._residency.gpus)
        model = load()
        # What the load freed again (the file's bytes, a parsed copy of the graph) counts for
        # nothing once handed back.
        release_free_memory()
        self._cost = measurement.cost()
        return model

    async def loaded(self, model: ModelVersion) -> None:
        await self._admit(model, self._cost)
