"""The gRPC server: the inference service, standard health checking and reflection.

It runs on the same event loop as the HTTP server, over the same data plane, and starts once
startup loading is done (as the HTTP server only then starts listening). With several worker
processes each binds the port with ``SO_REUSEPORT`` and the kernel spreads connections.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import service_pb2_grpc

from app.access_log import AccessLog
from app.grpc.calls import SERVICE
from app.grpc.servicer import InferenceServicer
from app.inference.dataplane import DataPlane
from app.settings import Settings
from app.tracing import Tracing

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """The bounds HTTP connections have, for gRPC's: head size, slow handshakes, idle
    connections and how many are open (the REST front end's are in app/api/connections.py)."""
    return [
        ("grpc.max_metadata_size", settings.max_header_bytes),
        ("grpc.absolute_max_metadata_size", settings.max_header_bytes),
        ("grpc.server_handshake_timeout_ms", int(settings.header_timeout_seconds * 1000)),
        # Channels are long-lived: an idle one is told to go away (GOAWAY, clients reconnect
        # when they next call) after 60 keep-alive periods.
        ("grpc.max_connection_idle_ms", int(settings.keep_alive_seconds * 60_000)),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
    ]


class GrpcServer:
    """One ``grpc.aio`` server; built in the running loop (``start``), stopped with a grace."""

    def __init__(
        self,
        dataplane: DataPlane,
        host: str,
        port: int,
        reuse_port: bool,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.access_log = access_log
        self.tracing = tracing
        self.address = f"{host}:{port}"
        self.reuse_port = reuse_port
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None

    async def start(self) -> None:
        """Bind the port and serve; the health service says SERVING while the server is."""
        limits = self.dataplane.limits
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limits.max_request_bytes),
                # Responses are bounded before encoding (max_response_bytes); the
                # transport's own bound is a backstop with room for the message framing.
                (
                    "grpc.max_send_message_length",
                    min(limits.max_response_bytes + (1 << 20), 2**31 - 1),
                ),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                *connection_options(self.dataplane.settings),
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane, self.access_log, self.tracing), server
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC cannot listen on {self.address}: {exc}") from None
        await server.start()
        self._server, self._health = server, health
        await self._set_health(serving=self.dataplane.ready())
        loop = asyncio.get_running_loop()

        def not_serving() -> None:
            # Called in a signal handler: only hand the work to the loop there.
            loop.call_soon_threadsafe(self._not_serving)

        self.dataplane.state.on_shutdown.append(not_serving)
        log.info("gRPC listening on %s:%d", self.address.rpartition(":")[0], self.port)

    async def refresh_health(self) -> None:
        """The health service says SERVING once the server is ready (and not draining)."""
        await self._set_health(serving=self.dataplane.ready())

    def _not_serving(self) -> None:
        task = asyncio.ensure_future(self._set_health(serving=False))
        task.add_done_callback(lambda _: None)

    async def _set_health(self, *, serving: bool) -> None:
        if self._health is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):
            await self._health.set(name, status)

    async def stop(self, grace: float) -> None:
        """Stop taking calls; those in flight get ``grace`` seconds, then are cancelled."""
        if self._server is not None:
            await self._set_health(serving=False)
            await self._server.stop(grace)
            self._server = None
