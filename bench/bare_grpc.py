"""The gRPC ceiling: a bare grpcio server that answers ModelInfer with fixed response bytes.

It does what any gRPC server must (HTTP/2 framing, the call's lifecycle, reading the message
and writing one) and nothing else: no parsing of either message, so its calls per second on
the same machine bound what onnx-serve's gRPC front end could reach.

    python -m bench.bare_grpc PORT RESPONSE_FILE [aio-uvloop|aio|threads]

``aio-uvloop`` is the setup onnx-serve runs (grpc.aio on uvloop); ``aio`` is grpc.aio on
asyncio's own loop; ``threads`` is grpcio's synchronous server on a thread pool.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

SERVICE = "inference.GRPCInferenceService"


def _handler(answer: bytes, asynchronous: bool) -> grpc.GenericRpcHandler:
    if asynchronous:

        async def infer_async(request: bytes, context: object) -> bytes:
            return answer

        method = grpc.unary_unary_rpc_method_handler(infer_async)
    else:

        def infer(request: bytes, context: object) -> bytes:
            return answer

        method = grpc.unary_unary_rpc_method_handler(infer)
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": method})


async def serve_async(port: int, answer: bytes) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handler(answer, True),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def serve_threads(port: int, answer: bytes) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((_handler(answer, False),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


def main(argv: list[str]) -> int:
    port, answer = int(argv[0]), Path(argv[1]).read_bytes()
    mode = argv[2] if len(argv) > 2 else "aio-uvloop"
    if mode == "aio-uvloop":
        import uvloop

        uvloop.run(serve_async(port, answer))
    elif mode == "aio":
        asyncio.run(serve_async(port, answer))
    elif mode == "threads":
        serve_threads(port, answer)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
