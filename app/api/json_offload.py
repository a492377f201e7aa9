"""Decode large JSON bodies in worker processes, so that no body can stall the event loop.

Parsing JSON and turning nested lists into arrays hold Python's interpreter lock all along
(about 40 ms a MiB, several times that for bodies made of nested lists): on a thread they
would stall the event loop just the same. So a body over ``OFFLOAD_BYTES`` goes to a worker
process (``app.protocol.json_worker``) over pipes the loop reads without blocking; only the
finished arrays come back. A worker whose memory grew past ``RECYCLE_BYTES`` during a decode
is replaced, so that its peak is given back to the system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
from typing import Any

from starlette.requests import Request

from app.errors import InferenceFailed, ServingError
from app.protocol.containers import check_containers
from app.protocol.json_bodies import OFFLOAD_BYTES
from app.protocol.json_worker import FRAME
from app.protocol.limits import RequestLimits
from app.protocol.v2 import loads_object

log = logging.getLogger(__name__)

#: A worker that holds more than this after a decode is replaced.
RECYCLE_BYTES = 256 * 1024 * 1024


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def call(self, name: str, args: tuple[Any, ...]) -> tuple[bool, Any, int]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        data = pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)
        stdin.write(FRAME.pack(len(data)))
        stdin.write(data)
        del data
        await stdin.drain()
        (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
        answer: tuple[bool, Any, int] = pickle.loads(await stdout.readexactly(size))
        return answer

    def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


class JsonDecoders:
    """Up to ``processes`` worker processes, started when a large body first needs one."""

    def __init__(self, processes: int = 1) -> None:
        self.processes = processes
        self._idle: list[_Worker] = []
        self._free: asyncio.Semaphore | None = None
        self._closed = False

    async def _start(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.protocol.json_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**20,
        )
        return _Worker(process)

    async def run(self, name: str, *args: Any) -> Any:
        """``app.protocol.json_bodies.<name>(*args)`` in a worker; its result or its error."""
        if self._closed:
            raise InferenceFailed("the server is shutting down")
        if self._free is None:
            self._free = asyncio.Semaphore(self.processes)
        async with self._free:
            worker = self._idle.pop() if self._idle else await self._start()
            try:
                ok, result, resident = await worker.call(name, args)
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
                worker.stop()
                raise InferenceFailed(f"the JSON decoding process failed: {exc!r}") from None
            except BaseException:
                # Cancelled mid-call (the client left): its answer would confuse the next.
                worker.stop()
                raise
            if resident > RECYCLE_BYTES or self._closed:
                worker.stop()
            else:
                self._idle.append(worker)
        if not ok:
            assert isinstance(result, ServingError)
            raise result
        return result

    async def close(self) -> None:
        """Stop every idle worker (busy ones stop when their call ends)."""
        self._closed = True
        for worker in self._idle:
            worker.stop()
            with contextlib.suppress(ProcessLookupError):
                await worker.process.wait()
        self._idle.clear()


def json_decoders(request: Request) -> JsonDecoders:
    """The app's decoding processes."""
    decoders: JsonDecoders = request.app.state.json_decoders
    return decoders


async def plain_document(request: Request, body: bytes, limits: RequestLimits) -> dict[str, Any]:
    """A ``/predict`` or KServe v1 body as an object: a large one decoded by a worker, its
    tensors already arrays; a small one parsed here."""
    if len(body) > OFFLOAD_BYTES:
        doc: dict[str, Any] = await json_decoders(request).run("plain_document", body, limits)
        return doc
    check_containers(body, limits.max_json_containers)
    return loads_object(body)
