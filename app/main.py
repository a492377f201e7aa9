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

from app import __version__
from app.access_log import AccessLog, access_log_for
from app.api import errors
from app.api.connection_share import ConnectionShare
from app.api.fastpath import PlainRoutes, ServingApp, add_hot_routes
from app.api.head import HeadAsGet
from app.api.json_offload import JsonDecoders
from app.api.middleware import RequestContextMiddleware
from app.api.openapi import build_openapi
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
from app.metrics.loop_lag import LoopLag
from app.registry.cuda_libraries import preload_cuda_libraries
from app.registry.installer import ModelInstaller
from app.registry.registry import ModelRegistry
from app.registry.repository import open_repository
from app.registry.residency import Residency
from app.registry.watcher import RepositoryWatcher
from app.settings import Settings
from app.tracing import Tracing

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
    dataplane: DataPlane = app.state.dataplane
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
    state: ServerState = app.state.server
    grpc_server: GrpcServer | None = app.state.grpc

    async def load_then_ready() -> None:
        # The server listens meanwhile: liveness answers, each model serves once it has
        # loaded, and a model that takes long (up to its time limit) holds up none of the
        # others; readiness comes when every model has loaded or failed.
        await registry.load_all()
        if watcher is not None:
            watcher.start()
        state.ready = True
        if grpc_server is not None and not state.shutting_down:
            await grpc_server.refresh_health()

    loop_lag = LoopLag()
    app.state.metrics.loop_lag = loop_lag.take
    watching = asyncio.create_task(loop_lag.watch())
    startup = asyncio.create_task(load_then_ready())
    startup.add_done_callback(_log_failure)
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
        if share is not None:
            # One of several workers: it starts listening once its models have loaded, so
            # no connection reaches a worker that would answer "loading" while others serve
            # (or at once when a signal stops it meanwhile, to shut down).
            await _until_loaded_or_stopped(startup, state)
        if grpc_server is not None and not state.shutting_down:
            # A port in use fails the startup here, as the HTTP port's does.
            await grpc_server.start()
        yield
    finally:
        restore_signals()
        state.shut_down()
        if counting is not None:
            counting.cancel()
        for task in (startup, watching):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if grpc_server is not None:
            # Calls still running after the drain's grace period get a last second.
            await grpc_server.stop(FINAL_GRPC_SECONDS)
        if watcher is not None:
            await watcher.stop()
        await app.state.residency.close()
        await app.state.json_decoders.close()
        dataplane.image_decoders.close()
        closing = len(registry.live())
        await registry.close()
        log.info("shut down: closed the sessions of %d model versions", closing)
        tracing: Tracing | None = app.state.tracing
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)
        if flushing is not None:
            flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flushing
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
        if access_log is not None:
            access_log.close()


async def _until_loaded_or_stopped(startup: asyncio.Task[None], state: ServerState) -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    def on_shutdown() -> None:
        # Called in a signal handler: only hand the work to the loop there.
        loop.call_soon_threadsafe(stop)

    state.on_shutdown.append(on_shutdown)
    try:
        await asyncio.wait([startup, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        state.on_shutdown.remove(on_shutdown)
        stopped.cancel()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("startup failed", exc_info=task.exception())


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    tracing: Tracing | None = None,
    connection_share: ConnectionShare | None = None,
) -> FastAPI:
    """Build a fresh app; models load when its lifespan starts. ``tracing`` defaults to the
    settings' OTLP export (None: off); ``connection_share``: this worker's place among
    several (app/api/connection_share.py)."""
    metrics = metrics if metrics is not None else Metrics()
    tracing = tracing if tracing is not None else Tracing.from_settings(settings)
    if settings.preload_cuda:
        preload_cuda_libraries()
    repo = open_repository(settings.model_repository, settings.model_name)
    state = ServerState()
    registry = ModelRegistry(
        repo,
        settings,
        metrics,
        runner_factory=partial(
            runner_for,
            metrics=metrics,
            default_timeout_us=settings.default_timeout_us,
            max_waiting=settings.max_queued_requests,
        ),
    )
    residency = Residency(registry, settings, metrics)
    registry.hooks = residency
    installer = ModelInstaller(registry, settings)
    dataplane = DataPlane(registry, installer, metrics, settings, state, residency)
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
    app.state.residency = residency
    app.state.installer = installer
    app.state.dataplane = dataplane
    app.state.server = state
    app.state.tracing = tracing
    app.state.json_decoders = JsonDecoders(settings.json_decode_processes)
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
            tracing=tracing,
        )
        if settings.grpc_port
        else None
    )
    app.state.watcher = None
    if settings.repository_poll_seconds > 0:
        app.state.watcher = RepositoryWatcher(installer, settings.repository_poll_seconds)
        installer.on_change = app.state.watcher.refresh
    app.add_middleware(HeadAsGet)
    front = partial(
        RequestContextMiddleware,
        state=state,
        responses=metrics.http_responses,
        tracing=tracing,
        access_log=access_log,
        share=connection_share,
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
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn (``--factory``): settings from the environment."""
    settings = Settings()
    # Each worker process builds its app here, so each sets up its own logging.
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, connection_share=ConnectionShare.from_environment())
