"""gRPC load from h2load (Debian's nghttp2-client): a unary call replayed as an HTTP/2 POST.

A gRPC unary request is one HTTP/2 stream whose body is the serialised message behind a
5-byte frame header (compression flag, big-endian length), sent with ``content-type:
application/grpc``. h2load replays it on ``concurrency`` connections (one stream each, closed
loop) and logs each request's latency; a gRPC error is still an HTTP 200 (its status is in the
trailers), so callers check answers and the server's success count, not h2load's.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def frame(message: bytes) -> bytes:
    """A gRPC message as it travels in an HTTP/2 body: not compressed, length-prefixed."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load_path() -> str | None:
    return shutil.which("h2load")


def run_h2load(
    host: str, port: int, path: str, body: bytes, concurrency: int, seconds: float
) -> tuple[int, float, int, float, float]:
    """Requests, seconds, failures, p50 and p99 latency (ms) of one closed-loop window."""
    h2load = h2load_path()
    if h2load is None:
        raise RuntimeError("h2load not found: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        data = Path(tmp) / "body"
        data.write_bytes(body)
        log = Path(tmp) / "requests.tsv"
        headers = [arg for k, v in GRPC_HEADERS.items() for arg in ("-H", f"{k}: {v}")]
        command = [
            h2load, "-t1", f"-c{concurrency}", "-m1", f"-D{max(1, round(seconds))}",
            *headers, "-d", str(data), f"--log-file={log}", f"http://{host}:{port}{path}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        finished = re.search(r"finished in ([0-9.]+)s", done.stdout)
        counts = re.search(
            r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", done.stdout
        )
        if finished is None or counts is None:
            raise RuntimeError(f"h2load gave no result:\n{done.stdout}\n{done.stderr}")
        latencies = [
            int(line.split("\t")[2]) / 1000 for line in log.read_text().splitlines() if line
        ]
    succeeded = int(counts.group(2))
    ms = np.array(latencies) if latencies else np.zeros(1)
    return (
        succeeded,
        float(finished.group(1)),
        int(counts.group(1)) - succeeded,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
    )
