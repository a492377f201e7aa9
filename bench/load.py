"""Closed-loop load: ``wrk`` with a Lua script for the POST body, or a Python fallback.

Each of ``concurrency`` connections sends the same request again as soon as the answer to
the last one has arrived (keep-alive), for ``seconds``. Latency is from send to answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.grpc_load import run_h2load

WRK_MARK = "BENCH_RESULT "
WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %%d, \"seconds\": %%f, \"errors\": %%d, " ..
    "\"status_errors\": %%d, \"p50_ms\": %%f, \"p99_ms\": %%f}\n",
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass(frozen=True, slots=True)
class Request:
    """One POST, sent again and again; a gRPC call (``grpc``) goes to the gRPC port."""

    path: str
    body: bytes
    headers: dict[str, str]
    grpc: bool = False


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    """The wrk binary, unless BENCH_CLIENT=python asks for the fallback."""
    if os.environ.get("BENCH_CLIENT") == "python":
        return None
    return shutil.which("wrk")


def run_load(
    host: str, port: int, request: Request, concurrency: int, seconds: float
) -> LoadResult:
    """Drive ``request`` at ``concurrency`` for ``seconds`` with wrk (h2load for gRPC), else
    with Python."""
    if request.grpc:
        done, elapsed, failed, p50, p99 = run_h2load(
            host, port, request.path, request.body, concurrency, seconds
        )
        return LoadResult(done, elapsed, failed, p50, p99, "h2load")
    wrk = wrk_path()
    if wrk is not None:
        return _run_wrk(wrk, host, port, request, concurrency, seconds)
    return asyncio.run(_run_python(host, port, request, concurrency, seconds))


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _run_wrk(
    wrk: str, host: str, port: int, request: Request, concurrency: int, seconds: float
) -> LoadResult:
    headers = "\n".join(
        f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in request.headers.items()
    )
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(request.body)
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT % {"headers": headers})
        command = [
            wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
            "-s", str(script), f"http://{host}:{port}{request.path}",
        ]  # fmt: skip
        done = subprocess.run(
            command,
            env={**os.environ, "BENCH_BODY": str(body)},
            capture_output=True,
            text=True,
            check=False,
        )
    for line in done.stdout.splitlines():
        if line.startswith(WRK_MARK):
            doc = json.loads(line[len(WRK_MARK) :])
            return LoadResult(
                doc["requests"],
                doc["seconds"],
                doc["errors"] + doc["status_errors"],
                doc["p50_ms"],
                doc["p99_ms"],
                "wrk",
            )
    raise RuntimeError(f"wrk gave no result:\n{done.stdout}\n{done.stderr}")


async def _run_python(
    host: str, port: int, request: Request, concurrency: int, seconds: float
) -> LoadResult:
    head = [f"POST {request.path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in request.headers.items()]
    head.append(f"Content-Length: {len(request.body)}")
    payload = ("\r\n".join(head) + "\r\n\r\n").encode() + request.body
    latencies: list[float] = []
    errors = [0]
    start = time.perf_counter()
    deadline = start + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                writer.write(payload)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if not status.split(b" ", 2)[1].startswith(b"2"):
                    errors[0] += 1
                latencies.append(time.perf_counter() - sent)
        except (OSError, asyncio.IncompleteReadError):
            errors[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(
        len(latencies),
        elapsed,
        errors[0],
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        "python",
    )
