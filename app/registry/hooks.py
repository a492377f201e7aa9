"""What the registry lets a residency policy decide: which versions load now, what a load
must wait for and what it cost, and what follows an unload.

The registry calls these hooks around every load and unload, so callers of the registry never
branch on the policy. ``NoHooks`` is the registry's behaviour without one: every version its
policy selects loads at once, and nothing is measured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from enum import StrEnum
from typing import Protocol

from app.registry.config import ModelConfig
from app.registry.model import ModelVersion


class LoadReason(StrEnum):
    """Why a version loads (the ``reason`` label of ``onnx_serve_model_loads_total``)."""

    #: Loaded when the server started.
    STARTUP = "startup"
    #: Loaded by a request for a model that was not loaded (a cold start).
    DEMAND = "demand"
    #: Loaded again: the load API, or the model changed on disk.
    RELOAD = "reload"
    #: Loaded to check an upload (or a load carrying files).
    UPLOAD = "upload"


class Loading(Protocol):
    """One load in progress, between its admission and its measurement."""

    def build(self, load: Callable[[], ModelVersion]) -> ModelVersion:
        """Run ``load`` (blocking: called off the event loop) and measure what it took."""

    async def loaded(self, model: ModelVersion) -> None:
        """Account for the version just built; raises (after discarding it) when it cannot
        be kept."""


class RegistryHooks(Protocol):
    """The residency policy as the registry sees it."""

    def eager_versions(
        self, config: ModelConfig, reason: LoadReason, selected: list[int], live: Collection[int]
    ) -> list[int]:
        """Which of the ``selected`` versions load now; the others wait for a request."""

    def loading(
        self, name: str, version: int, config: ModelConfig, reason: LoadReason
    ) -> AbstractAsyncContextManager[Loading]:
        """Admit one load (making room for it); the block builds the version."""

    def unloaded(self, model: ModelVersion) -> None:
        """A version's pool was retired: forget what it took."""


class _Unmeasured:
    def build(self, load: Callable[[], ModelVersion]) -> ModelVersion:
        return load()

    async def loaded(self, model: ModelVersion) -> None:
        return None


class NoHooks:
    """Everything selected loads at once; nothing is measured or evicted."""

    def eager_versions(
        self, config: ModelConfig, reason: LoadReason, selected: list[int], live: Collection[int]
    ) -> list[int]:
        return selected

    @asynccontextmanager
    async def loading(
        self, name: str, version: int, config: ModelConfig, reason: LoadReason
    ) -> AsyncIterator[Loading]:
        yield _Unmeasured()

    def unloaded(self, model: ModelVersion) -> None:
        return None
