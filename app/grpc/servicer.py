"""``inference.GRPCInferenceService`` over the data plane: decode, call it, encode.

Methods of the service this server does not offer (shared memory, trace and log settings)
answer UNIMPLEMENTED, as calls like any other (the generated base class's would raise
NotImplementedError, which grpc logs as a server error with its traceback).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from http import HTTPStatus
from typing import Any, TypeAlias

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app.access_log import AccessLog
from app.errors import ServingError, ShuttingDown
from app.grpc import codec
from app.grpc.calls import Calls, abort
from app.inference.context import GRPC, RequestContext
from app.inference.dataplane import DataPlane, InferenceResult
from app.inference.request_ids import request_id
from app.log import current_request_id
from app.tracing import Tracing

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
#: Requests of one stream served at once; the stream's next request waits for a free slot.
STREAM_CONCURRENCY = 64


class NotOffered(ServingError):
    """A method of the protocol's service that this server does not offer."""

    status = HTTPStatus.NOT_IMPLEMENTED
    grpc_status = "UNIMPLEMENTED"
    reason = "not_implemented"


def not_offered(
    method: str, feature: str
) -> Callable[[InferenceServicer, Any, Context], Awaitable[Any]]:
    """A servicer method that answers UNIMPLEMENTED, saying which ``feature`` is missing."""

    async def refuse(self: InferenceServicer, request: Any, context: Context) -> Any:
        async def body(_: RequestContext) -> Any:
            raise NotOffered(f"{feature} is not supported by this server")

        return await self.calls.unary(context, method, body, counted=False)

    refuse.__name__ = refuse.__qualname__ = method
    return refuse


def stream_error(
    message: service_pb2.ModelInferRequest, error: ServingError
) -> service_pb2.ModelStreamInferResponse:
    """A stream's answer to a request that failed: the error, and whose request it was."""
    return service_pb2.ModelStreamInferResponse(
        error_message=error.message,
        infer_response=service_pb2.ModelInferResponse(
            model_name=message.model_name, model_version=message.model_version, id=message.id
        ),
    )


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Every call decodes its message, calls the data plane and encodes the answer."""

    def __init__(
        self,
        dataplane: DataPlane,
        access_log: AccessLog | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.calls = Calls(dataplane, access_log, tracing)

    # ---- health and metadata -------------------------------------------------------------

    async def ServerLive(  # noqa: N802 - the protocol's method names
        self, request: service_pb2.ServerLiveRequest, context: Context
    ) -> service_pb2.ServerLiveResponse:
        async def body(_: RequestContext) -> service_pb2.ServerLiveResponse:
            return service_pb2.ServerLiveResponse(live=True)

        return await self.calls.unary(context, "ServerLive", body, counted=False)

    async def ServerReady(  # noqa: N802
        self, request: service_pb2.ServerReadyRequest, context: Context
    ) -> service_pb2.ServerReadyResponse:
        async def body(_: RequestContext) -> service_pb2.ServerReadyResponse:
            return service_pb2.ServerReadyResponse(ready=self.dataplane.ready())

        return await self.calls.unary(context, "ServerReady", body, counted=False)

    async def ModelReady(  # noqa: N802
        self, request: service_pb2.ModelReadyRequest, context: Context
    ) -> service_pb2.ModelReadyResponse:
        async def body(_: RequestContext) -> service_pb2.ModelReadyResponse:
            ready = self.dataplane.model_ready(request.name, request.version or None)
            return service_pb2.ModelReadyResponse(ready=ready)

        return await self.calls.unary(context, "ModelReady", body)

    async def ServerMetadata(  # noqa: N802
        self, request: service_pb2.ServerMetadataRequest, context: Context
    ) -> service_pb2.ServerMetadataResponse:
        async def body(_: RequestContext) -> service_pb2.ServerMetadataResponse:
            return service_pb2.ServerMetadataResponse(**self.dataplane.server_metadata())

        return await self.calls.unary(context, "ServerMetadata", body)

    async def ModelMetadata(  # noqa: N802
        self, request: service_pb2.ModelMetadataRequest, context: Context
    ) -> service_pb2.ModelMetadataResponse:
        async def body(_: RequestContext) -> service_pb2.ModelMetadataResponse:
            doc = await self.dataplane.model_metadata(request.name, request.version or None)
            return codec.model_metadata(doc)

        return await self.calls.unary(context, "ModelMetadata", body)

    async def ModelConfig(  # noqa: N802
        self, request: service_pb2.ModelConfigRequest, context: Context
    ) -> service_pb2.ModelConfigResponse:
        async def body(_: RequestContext) -> service_pb2.ModelConfigResponse:
            return codec.model_config(
                await self.dataplane.model_config(request.name, request.version or None)
            )

        return await self.calls.unary(context, "ModelConfig", body)

    async def ModelStatistics(  # noqa: N802
        self, request: service_pb2.ModelStatisticsRequest, context: Context
    ) -> service_pb2.ModelStatisticsResponse:
        async def body(_: RequestContext) -> service_pb2.ModelStatisticsResponse:
            entries = self.dataplane.statistics(request.name, request.version)
            return codec.model_statistics(entries)

        return await self.calls.unary(context, "ModelStatistics", body)

    # ---- repository ------------------------------------------------------------------------

    async def RepositoryIndex(  # noqa: N802
        self, request: service_pb2.RepositoryIndexRequest, context: Context
    ) -> service_pb2.RepositoryIndexResponse:
        async def body(_: RequestContext) -> service_pb2.RepositoryIndexResponse:
            return codec.repository_index(self.dataplane.repository_index(request.ready))

        return await self.calls.unary(context, "RepositoryIndex", body, access="management")

    async def RepositoryModelLoad(  # noqa: N802
        self, request: service_pb2.RepositoryModelLoadRequest, context: Context
    ) -> service_pb2.RepositoryModelLoadResponse:
        async def body(_: RequestContext) -> service_pb2.RepositoryModelLoadResponse:
            parameters = {k: codec.parameter_value(v) for k, v in request.parameters.items()}
            await self.dataplane.load(request.model_name, parameters)
            return service_pb2.RepositoryModelLoadResponse()

        return await self.calls.unary(context, "RepositoryModelLoad", body, access="management")

    async def RepositoryModelUnload(  # noqa: N802
        self, request: service_pb2.RepositoryModelUnloadRequest, context: Context
    ) -> service_pb2.RepositoryModelUnloadResponse:
        async def body(_: RequestContext) -> service_pb2.RepositoryModelUnloadResponse:
            await self.dataplane.unload(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

        return await self.calls.unary(context, "RepositoryModelUnload", body, access="management")

    # ---- not offered -----------------------------------------------------------------------

    SystemSharedMemoryStatus = not_offered(
        "SystemSharedMemoryStatus", "the system shared memory extension"
    )
    SystemSharedMemoryRegister = not_offered(
        "SystemSharedMemoryRegister", "the system shared memory extension"
    )
    SystemSharedMemoryUnregister = not_offered(
        "SystemSharedMemoryUnregister", "the system shared memory extension"
    )
    CudaSharedMemoryStatus = not_offered(
        "CudaSharedMemoryStatus", "the CUDA shared memory extension"
    )
    CudaSharedMemoryRegister = not_offered(
        "CudaSharedMemoryRegister", "the CUDA shared memory extension"
    )
    CudaSharedMemoryUnregister = not_offered(
        "CudaSharedMemoryUnregister", "the CUDA shared memory extension"
    )
    TraceSetting = not_offered("TraceSetting", "the trace extension")
    LogSettings = not_offered("LogSettings", "the logging extension")

    # ---- inference -------------------------------------------------------------------------

    async def _infer(
        self, message: service_pb2.ModelInferRequest, context: RequestContext
    ) -> service_pb2.ModelInferResponse:
        limits = self.dataplane.limits
        return await self.dataplane.infer(
            message.model_name,
            message.model_version or None,
            lambda _: codec.decode_infer_request(message, limits),
            context,
            partial(_response, limits.max_response_bytes),
        )

    async def ModelInfer(  # noqa: N802
        self, request: service_pb2.ModelInferRequest, context: Context
    ) -> service_pb2.ModelInferResponse:
        return await self.calls.unary(
            context, "ModelInfer", lambda call: self._infer(request, call), access="inference"
        )

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: Context
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """A stream of independent requests; each answer (or its error) is sent as it is
        ready, so answers may come in another order than the requests (ids tell them apart)."""
        _, refused = self.calls.open(context, "inference")
        if refused is not None:
            await abort(context, refused)
            return
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_CONCURRENCY)
        state = self.dataplane.state

        async def serve(message: service_pb2.ModelInferRequest) -> None:
            call = RequestContext(request_id(message.id.encode() if message.id else None), GRPC)
            token = current_request_id.set(call.request_id)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            state.inflight.enter()
            try:
                answer = service_pb2.ModelStreamInferResponse(
                    infer_response=await self._infer(message, call)
                )
            except ServingError as exc:
                code = grpc.StatusCode[exc.grpc_status]
                answer = stream_error(message, exc)
            finally:
                state.inflight.leave()
                self.calls.log(context, "ModelStreamInfer", code, started, call.request_id)
                current_request_id.reset(token)
                slots.release()
            await answers.put(answer)

        async def read() -> None:
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for message in request_iterator:
                    await slots.acquire()
                    if state.shutting_down:
                        slots.release()
                        error = ShuttingDown(
                            "the server is shutting down; retry on another instance"
                        )
                        await answers.put(stream_error(message, error))
                        continue
                    task = asyncio.create_task(serve(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await answers.get()) is not None:
                yield answer
            await reader
        finally:
            reader.cancel()


def _response(max_response_bytes: int, result: InferenceResult) -> service_pb2.ModelInferResponse:
    model = result.model
    return codec.encode_infer_response(
        model.name, str(model.version), result.outputs, result.request, max_response_bytes
    )
