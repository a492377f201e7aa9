"""What every gRPC call goes through: drain gate, API key, request id, in-flight count,
error status and access log (what the REST middleware and dependencies do for HTTP)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import grpc

from app.access_log import AccessLog
from app.errors import ServingError, ShuttingDown
from app.inference.context import GRPC, RequestContext
from app.inference.dataplane import DataPlane
from app.inference.request_ids import request_id
from app.log import current_request_id
from app.tracing import TRACE_HEADERS, RequestSpan, Tracing

T = TypeVar("T")
#: Who may make a call: anyone (health, metadata, statistics, as over REST), holders of the
#: inference key when one is set, or holders of the management key.
Access = Literal["open", "inference", "management"]
log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
CODES = {code.name: code for code in grpc.StatusCode}
#: Trailing metadata of a call that waited for its model to load on demand.
COLD_START_KEY = "x-cold-start"


def presented(metadata: Any) -> tuple[bytes | None, str | None]:
    """The client's request id and API key from the call's metadata (one pass)."""
    given_id: bytes | None = None
    key: str | None = None
    for item in metadata or ():
        name = item.key
        if name == "x-request-id" and given_id is None:
            value = item.value
            given_id = value.encode("latin-1") if isinstance(value, str) else value
        elif name == "authorization":
            scheme, _, token = str(item.value).partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                key = token.strip()
        elif name == "x-api-key" and key is None:
            key = str(item.value).strip()
    return given_id, key


class Calls:
    """Runs one servicer method's body the way every call of this server runs; each call's
    access line goes to ``access_log`` (None: no access log)."""

    def __init__(
        self,
        dataplane: DataPlane,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.state = dataplane.state
        self.access_log = access_log
        #: Traces unary calls when tracing is on (see app/tracing.py).
        self.tracing = tracing

    def open(
        self, context: grpc.aio.ServicerContext[Any, Any], access: Access = "open"
    ) -> tuple[RequestContext, ServingError | None]:
        """The call's request context, and the error its key earns (None: it may go on)."""
        given_id, key = presented(context.invocation_metadata())
        request = RequestContext(request_id(given_id), GRPC)
        keys = self.dataplane.access
        try:
            if access == "inference":
                if not keys.inference_open:
                    keys.check_inference(key)
            elif access == "management":
                keys.check_management(key)
        except ServingError as exc:
            return request, exc
        return request, None

    def log(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        code: grpc.StatusCode,
        started: float,
        call_id: str,
        span: RequestSpan | None = None,
    ) -> None:
        """The call's access line, with the same fields as the HTTP lines."""
        if self.access_log is not None:
            self.access_log.record(
                call_id, GRPC, "GRPC", f"/{SERVICE}/{method}", code.value[0], code.name, None,
                time.perf_counter() - started, context.peer() or "-",
                None if span is None else span.trace_id(),
            )  # fmt: skip

    async def unary(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        body: Callable[[RequestContext], Awaitable[T]],
        *,
        access: Access = "open",
        counted: bool = True,
    ) -> T:
        """``body(request_context)``, answered with its status; ``access`` says which key
        the call needs; ``counted`` calls are refused while the server drains and counted in
        flight until they end."""
        started = time.perf_counter()
        state = self.state
        code = grpc.StatusCode.OK
        token = None
        request: RequestContext | None = None
        span = None
        call_id = "-"
        try:
            request, refused = self.open(context, access)
            call_id = request.request_id
            token = current_request_id.set(call_id)
            if self.tracing is not None:
                span = request.trace = await self._span(context, method, call_id)
            if counted and state.shutting_down:
                raise ShuttingDown("the server is shutting down; retry on another instance")
            if refused is not None:
                raise refused
            if not counted:
                return await body(request)
            state.inflight.enter()
            try:
                answer = await body(request)
            finally:
                state.inflight.leave()
            if request.cold_start:
                context.set_trailing_metadata(((COLD_START_KEY, "true"),))
            return answer
        except ServingError as exc:
            code = CODES[exc.grpc_status]
            await abort(context, exc, cold_start=request is not None and request.cold_start)
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            code = grpc.StatusCode.INTERNAL
            await context.abort(code, "internal server error")
            raise  # not reached: abort raises
        finally:
            self.log(context, method, code, started, call_id, span)
            if span is not None:
                error = None if code == grpc.StatusCode.OK else code.name
                span.finish(f"{SERVICE}/{method}", error=error)
            if token is not None:
                current_request_id.reset(token)

    async def _span(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, request_id: str
    ) -> RequestSpan:
        """The call's server span (child of its ``traceparent`` metadata), whose own
        ``traceparent`` goes back in the initial metadata."""
        assert self.tracing is not None
        carrier = {
            str(key): value if isinstance(value, str) else value.decode("latin-1")
            for key, value in context.invocation_metadata() or ()
            if key in TRACE_HEADERS
        }
        attributes = {
            "rpc.system": "grpc",
            "rpc.service": SERVICE,
            "rpc.method": method,
            "onnx_serve.request_id": request_id,
        }
        span = self.tracing.start(f"{SERVICE}/{method}", carrier, attributes)
        await context.send_initial_metadata((("traceparent", span.traceparent()),))
        return span


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: ServingError, *, cold_start: bool = False
) -> None:
    """End the call with the error's status and message, and in trailing metadata its
    Retry-After when it has one and whether it waited for its model to load."""
    trailers = []
    if exc.retry_after is not None:
        trailers.append(("retry-after", str(max(1, math.ceil(exc.retry_after)))))
    if cold_start:
        trailers.append((COLD_START_KEY, "true"))
    if trailers:
        context.set_trailing_metadata(tuple(trailers))
    await context.abort(CODES[exc.grpc_status], exc.message)
