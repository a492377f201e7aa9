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
from app.access_log import AccessLog, access_log_for
from app.api import errors, image_docs
from app.api.connections import ConnectionShare
from app.api.fastpath import PlainRoutes, ServingApp, add_hot_routes
from app.api.middleware import RequestContextMiddleware
from app.api.routes import console, health, images, predict, repository, v1, v2
from app.api.routes import metrics as metrics_routes
from app.api.routes import models as model_routes
from app.api.shutdown import drain_on_signals
from app.grpc.server import GrpcServer
from app.inference.dataplane import DataPlane
from app.inference.lifecycle import ServerState
from app.inference.runners import runner_for
from app.log import configure_logging
from app.metrics import Metrics, flush_periodically, multiprocess_dir
from app.protocol.schemas import component_schemas
from app.registry.cuda_libraries import preload_cuda_libraries
from app.registry.installer import ModelInstaller
from app.registry.registry import ModelRegistry
from app.registry.repository import open_repository
from app.registry.watcher import RepositoryWatcher
from app.settings import Settings

log = logging.getLogger(__name__)

FINAL_GRPC_SECONDS = 1.0

DESCRIPTION = (
    "Serves ONNX models over the Open Inference Protocol v2 (Triton-compatible, REST here and "
    "gRPC on its own port), KServe v1 and a simple `/predict` API, with Prometheus metrics at "
    "`/metrics`."
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    registry: ModelRegistry = app.state.registry
    if settings.management_api_key is None and settings.allow_open_management:
        log.warning("management endpoints are open to anyone: no API key is configured")
    registry.repository.clean_staging()
    access_log: AccessLog | None = app.state.access_log
    if access_log is not None:
        access_log.start()
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
    state: ServerState = app.state.server
    state.ready = True
    grpc_server: GrpcServer | None = app.state.grpc
    if grpc_server is not None:
        await grpc_server.start()
    # With worker processes a scrape reads every worker's series from shared files: each
    # worker moves its figures there on its own (a single process does it at each scrape).
    flushing = (
        asyncio.create_task(flush_periodically(app.state.metrics))
        if multiprocess_dir() is not None
        else None
    )
    share: ConnectionShare | None = app.state.connection_share
    counting = asyncio.create_task(share.run()) if share is not None else None
    restore_signals = drain_on_signals(state, settings.shutdown_grace_seconds)
    try:
        yield
    finally:
        restore_signals()
        state.shut_down()
        if counting is not None:
            counting.cancel()
        if grpc_server is not None:
            # Calls still running after the drain's grace period get a last second.
            await grpc_server.stop(FINAL_GRPC_SECONDS)
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
        if access_log is not None:
            access_log.close()


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    connection_share: ConnectionShare | None = None,
) -> FastAPI:
    """Build a fresh app; models load when its lifespan starts. ``connection_share``: this
    worker's place among several (app/api/connections.py)."""
    metrics = metrics if metrics is not None else Metrics()
    if settings.preload_cuda:
        preload_cuda_libraries()
    repo = open_repository(settings.model_repository, settings.model_name)
    state = ServerState()
    registry = ModelRegistry(
        repo,
        settings,
        metrics,
        runner_factory=partial(
            runner_for, metrics=metrics, default_timeout_us=settings.default_timeout_us
        ),
    )
    installer = ModelInstaller(registry)
    dataplane = DataPlane(registry, installer, metrics, settings, state)
    metrics.requests_in_flight = lambda: state.inflight.count

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
    app.state.installer = installer
    app.state.dataplane = dataplane
    app.state.server = state
    access_log = access_log_for(settings.log_level, settings.log_format, settings.access_log)
    app.state.access_log = access_log
    app.state.connection_share = connection_share
    app.state.grpc = (
        GrpcServer(
            dataplane,
            settings.host,
            settings.grpc_port,
            reuse_port=settings.workers > 1,
            access_log=access_log,
        )
        if settings.grpc_port
        else None
    )
    app.state.watcher = None
    if settings.repository_poll_seconds > 0:
        app.state.watcher = RepositoryWatcher(installer, settings.repository_poll_seconds)
        installer.on_change = app.state.watcher.refresh
    front = partial(
        RequestContextMiddleware, state=state, access_log=access_log, share=connection_share
    )
    app.add_middleware(front)
    errors.install(app)
    app.include_router(model_routes.router)
    for module in (health, v2, repository, v1, metrics_routes):
        app.include_router(module.router)
    hot = [*v2.HOT_ROUTES, *v1.HOT_ROUTES, *predict.HOT_ROUTES, *images.HOT_ROUTES]
    add_hot_routes(app.router, hot)
    app.include_router(console.router)
    app.plain_routes = PlainRoutes(hot, front)

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
            schema["components"]["schemas"].update(image_docs.component_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (``--factory``): settings from the environment."""
    settings = Settings()
    # Each worker process builds its app here, so each sets up its own logging.
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, connection_share=ConnectionShare.from_environment())
