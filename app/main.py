"""Application factory: wires settings, metrics, repository, registry and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import __version__
from app.api import errors
from app.api.fastpath import PlainRoutes, ServingApp
from app.api.middleware import InFlightRequests, RequestContextMiddleware
from app.api.routes import console, health, images, predict, repository, v1, v2
from app.api.routes import metrics as metrics_routes
from app.api.routes import models as model_routes
from app.api.shutdown import drain_on_signals
from app.inference.batching import batcher_for
from app.inference.service import InferenceService
from app.log import configure_logging
from app.metrics import Metrics, flush_periodically, multiprocess_dir
from app.protocol.schemas import component_schemas
from app.protocol.v2 import RequestLimits
from app.registry.cuda_libraries import preload_cuda_libraries
from app.registry.installer import ModelInstaller
from app.registry.registry import ModelRegistry
from app.registry.repository import open_repository
from app.registry.watcher import RepositoryWatcher
from app.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Serves ONNX models over the Open Inference Protocol v2 (Triton-compatible), KServe v1 "
    "and a simple `/predict` API, with Prometheus metrics at `/metrics`."
)


def limits_from(settings: Settings) -> RequestLimits:
    return RequestLimits(
        max_request_bytes=settings.max_request_bytes,
        max_elements=settings.max_tensor_elements,
        max_depth=settings.max_json_depth,
        max_inputs=settings.max_inputs,
        max_bytes_element=settings.max_bytes_element,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    registry: ModelRegistry = app.state.registry
    if settings.management_api_key is None and settings.allow_open_management:
        log.warning("management endpoints are open to anyone: no API key is configured")
    registry.repository.clean_staging()
    watcher: RepositoryWatcher | None = app.state.watcher
    if watcher is not None:
        watcher.prime()
    elif settings.workers > 1 and (settings.management_api_key or settings.allow_open_management):
        log.warning(
            "uploads reach only the worker that took them: set ONNX_SERVE_REPOSITORY_POLL_SECONDS"
        )
    await registry.load_all()
    if watcher is not None:
        watcher.start()
    app.state.ready = True
    # With worker processes a scrape reads every worker's series from shared files: each
    # worker moves its figures there on its own (a single process does it at each scrape).
    flushing = (
        asyncio.create_task(flush_periodically(app.state.metrics))
        if multiprocess_dir() is not None
        else None
    )
    restore_signals = drain_on_signals(
        app.state, app.state.inflight, settings.shutdown_grace_seconds
    )
    try:
        yield
    finally:
        restore_signals()
        app.state.shutting_down = True
        if watcher is not None:
            await watcher.stop()
        closing = len(registry.live())
        await registry.close()
        log.info("shut down: closed the sessions of %d model versions", closing)
        if flushing is not None:
            flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flushing
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """Build a fresh app; models load when its lifespan starts."""
    metrics = metrics if metrics is not None else Metrics()
    if settings.preload_cuda:
        preload_cuda_libraries()
    repo = open_repository(settings.model_repository, settings.model_name)
    registry = ModelRegistry(
        repo,
        settings,
        metrics,
        batcher_factory=partial(
            batcher_for, metrics=metrics, default_timeout_us=settings.default_timeout_us
        ),
    )
    service = InferenceService(
        registry, metrics, limits_from(settings), default_timeout_us=settings.default_timeout_us
    )

    app = ServingApp(
        title="onnx-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The service exports its own Prometheus metrics; FastAPI's OpenTelemetry hooks
        # would check for providers on every request (about 5% of a small model's cost).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.service = service
    installer = ModelInstaller(registry)
    app.state.installer = installer
    app.state.watcher = None
    if settings.repository_poll_seconds > 0:
        app.state.watcher = RepositoryWatcher(installer, settings.repository_poll_seconds)
        installer.on_change = app.state.watcher.refresh
    app.state.ready = False
    app.state.shutting_down = False
    app.state.inflight = InFlightRequests()
    app.add_middleware(RequestContextMiddleware, state=app.state, inflight=app.state.inflight)
    errors.install(app)
    app.include_router(model_routes.router)
    for module in (health, v2, repository, v1, predict, images, metrics_routes):
        app.include_router(module.router)
    app.include_router(console.router)
    app.plain_routes = PlainRoutes(
        [*v2.PLAIN_ROUTES, *v1.PLAIN_ROUTES, *predict.PLAIN_ROUTES],
        partial(RequestContextMiddleware, state=app.state, inflight=app.state.inflight),
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                component_schemas()
            )
            schema["components"]["schemas"].update(images.component_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (``--factory``): settings from the environment."""
    settings = Settings()
    # Each worker process builds its app here, so each sets up its own logging.
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    return create_app(settings)
