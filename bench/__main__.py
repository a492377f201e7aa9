"""``python -m bench``: onnx-serve against raw onnxruntime and a bare ASGI app, as ratios.

Each server figure is measured in pairs of windows alternating with its reference (the raw
onnxruntime loop for compute-bound models, the bare ASGI app for the overhead-bound MLP,
one worker for two), and the ratio reported is the median of the pairs' ratios, so that a
machine whose speed drifts (a shared VM, other jobs) still gives comparable figures.
Other processes' share of the CPU during the windows is reported too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import FLUSH_SECONDS
from bench import payloads
from bench.load import Request, run_load, wrk_path
from bench.memory import NOT_MEASURED, memory_section
from bench.models import REPOSITORY, RESNET_INPUT, RESNET_OUTPUT, WIDE_WIDTH, write_repository
from bench.optimized import optimize_section, optimize_targets
from bench.processes import CpuWatch, Process, bare_asgi, bare_grpc, onnx_serve
from bench.raw import run_loop, server_session
from bench.report import Row, machine, print_table, targets
from bench.throughput import batching_rows, few_connections_rows, log_section

HOST = "127.0.0.1"
Reference = Callable[[float], Row]
SECTIONS = ("resnet", "wide", "mlp", "log", "grpc", "workers", "optimize", "memory")


class Bench:
    """Measures rows and keeps those recorded for the table."""

    def __init__(self, seconds: float, pairs: int) -> None:
        self.seconds = seconds
        self.pairs = pairs
        self.rows: list[Row] = []

    def record(self, row: Row) -> Row:
        self.rows.append(row)
        print(row.line(), flush=True)
        return row

    def raw(
        self, name: str, session: ort.InferenceSession, feeds: dict[str, np.ndarray], seconds: float
    ) -> Row:
        """Run ``feeds`` back to back in this process for ``seconds``."""
        with CpuWatch([]) as cpu:
            loop = run_loop(session, feeds, seconds)
        return Row(
            name=name,
            kind="raw",
            concurrency=1,
            rows_per_request=loop.batch,
            per_second=loop.runs_per_second,
            p50_ms=loop.percentile(50) * 1000,
            p99_ms=loop.percentile(99) * 1000,
            tool="onnxruntime",
            server_cpu=cpu.share(cpu.own),
            foreign_cpu=cpu.share(cpu.foreign),
            requests=loop.runs,
        )

    def load(
        self,
        name: str,
        process: Process,
        request: Request,
        concurrency: int,
        seconds: float,
        *,
        kind: str = "server",
        workers: int = 1,
    ) -> Row:
        """Drive ``process`` with ``request`` at ``concurrency`` for ``seconds``."""
        port = process.grpc_port if request.grpc else process.port
        assert port is not None, f"{name}: the process serves no gRPC"
        with CpuWatch(process.pids()) as cpu:
            result = run_load(HOST, port, request, concurrency, seconds)
        return Row(
            name=name,
            kind=kind,
            concurrency=concurrency,
            per_second=result.per_second,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            errors=result.errors,
            tool=result.tool,
            workers=workers,
            server_cpu=cpu.share(cpu.server),
            foreign_cpu=cpu.share(cpu.foreign),
            requests=result.requests,
        )

    def paired(
        self,
        name: str,
        process: Process,
        request: Request,
        concurrency: int,
        reference: Reference,
        label: str,
        *,
        workers: int = 1,
        pairs: int | None = None,
    ) -> Row:
        """Alternate the reference and the server; record both with the median ratio."""

        def measure(seconds: float) -> Row:
            return self.load(name, process, request, concurrency, seconds, workers=workers)

        return self.alternate(measure, reference, label, pairs)

    def alternate(
        self, measure: Reference, reference: Reference, label: str, pairs: int | None = None
    ) -> Row:
        """Alternate windows of ``reference`` and ``measure``; record the medians of both,
        the second with the median ratio of its rows a second to the reference's."""
        references: list[Row] = []
        measured: list[Row] = []
        for _ in range(pairs or self.pairs):
            references.append(reference(self.seconds))
            measured.append(measure(self.seconds))
        ratios = [
            m.rows_per_second / r.rows_per_second for m, r in zip(measured, references, strict=True)
        ]
        self.record(median_row(references))
        row = median_row(measured)
        row.ratios[label] = statistics.median(ratios)
        if len(ratios) > 1:
            row.spread[label] = (min(ratios), max(ratios))
        return self.record(row)


def median_row(rows: list[Row]) -> Row:
    """One row for repeated windows: median rates and latencies, summed counts."""
    return replace(
        rows[0],
        per_second=statistics.median(r.per_second for r in rows),
        p50_ms=statistics.median(r.p50_ms for r in rows),
        p99_ms=statistics.median(r.p99_ms for r in rows),
        errors=sum(r.errors for r in rows),
        requests=sum(r.requests for r in rows),
        server_cpu=statistics.mean(r.server_cpu for r in rows),
        foreign_cpu=statistics.mean(r.foreign_cpu for r in rows),
        ratios={},
        spread={},
    )


def verify(process: Process, request: Request, expected: np.ndarray | None) -> str | None:
    if request.grpc:
        problem = payloads.check_grpc(f"{HOST}:{process.grpc_port}", request, expected)
    else:
        problem = payloads.check(process.url, request, expected)
    if problem is not None:
        print(f"  check of {request.path} failed: {problem}", flush=True)
    return problem


def require(process: Process, requests: list[Request], expected: np.ndarray) -> None:
    for request in requests:
        if verify(process, request, expected) is not None:
            raise SystemExit(f"the server answers {request.path} wrongly; see above")


def resnet_section(bench: Bench, server: Process, files: dict[str, Path]) -> None:
    """ResNet-50 through each front door, against the raw batch-1 loop."""
    session = server_session(files["resnet50"])
    x = payloads.resnet_input()
    expected = session.run([RESNET_OUTPUT], {RESNET_INPUT: x})[0]
    binary = payloads.v2_binary("resnet50", RESNET_INPUT, x, RESNET_OUTPUT)
    batched = payloads.v2_binary("resnet50_batched", RESNET_INPUT, x, RESNET_OUTPUT)
    as_json = payloads.v2_json("resnet50", RESNET_INPUT, x)
    two = payloads.v2_binary("resnet50_x2", RESNET_INPUT, x, RESNET_OUTPUT)
    batched4 = payloads.v2_binary("resnet50_batched4", RESNET_INPUT, x, RESNET_OUTPUT)
    over_grpc = payloads.grpc_infer("resnet50", RESNET_INPUT, x, RESNET_OUTPUT)
    require(server, [binary, batched, batched4, as_json, two, over_grpc], expected)

    def raw(seconds: float) -> Row:
        return bench.raw("raw onnxruntime, ResNet-50 batch 1", session, {RESNET_INPUT: x}, seconds)

    pairs = bench.pairs
    bench.paired("ResNet-50 v2 binary", server, binary, 1, raw, "raw", pairs=pairs)
    bench.paired("ResNet-50 v2 binary", server, binary, 4, raw, "raw", pairs=pairs)
    bench.paired("ResNet-50 gRPC raw tensors", server, over_grpc, 4, raw, "raw", pairs=pairs)
    name = "ResNet-50 v2 binary, dynamic batching"
    bench.paired(name, server, batched, 8, raw, "raw", pairs=pairs)
    name = "ResNet-50 v2 binary, dynamic batching, preferred batch 4"
    bench.paired(name, server, batched4, 8, raw, "raw", pairs=pairs)
    name = "ResNet-50 v2 binary, 2 instances x 1 thread"
    bench.paired(name, server, two, 8, raw, "raw", pairs=pairs)
    bench.paired("ResNet-50 v2 JSON", server, as_json, 4, raw, "raw", pairs=pairs)
    image = payloads.predict_image("resnet50", payloads.png_photo())
    problem = verify(server, image, None)
    if problem is None:
        name = "ResNet-50 /predict PNG image"
        bench.paired(name, server, image, 4, raw, "raw", pairs=pairs)
    else:
        bench.record(
            Row("ResNet-50 /predict PNG image", "skipped", note=f"no image path: {problem}")
        )
    # What batching gains in onnxruntime itself, before any serving cost: the most a batcher
    # can add on this machine.
    for batch in (2, 4, 8):

        def batched(seconds: float, rows: int = batch) -> Row:
            feeds = {RESNET_INPUT: payloads.resnet_input(rows)}
            return bench.raw(f"raw onnxruntime, ResNet-50 batch {rows}", session, feeds, seconds)

        bench.alternate(batched, raw, "raw", pairs=pairs)

    def images(rows: int) -> dict[str, np.ndarray]:
        return {RESNET_INPUT: payloads.resnet_input(rows)}

    request = payloads.v2_binary("resnet50_batched", RESNET_INPUT, x, RESNET_OUTPUT)
    # A round of 64 images takes over a second even on a quiet machine: longer windows.
    window = max(bench.seconds, 10.0)
    batching_rows(
        bench, server, session, "resnet50_batched", request, images, "ResNet-50", 1, window
    )


def wide_section(bench: Bench, server: Process, files: dict[str, Path]) -> None:
    """A memory-bound model, where a batch costs little more than one row: batching pays."""
    session = server_session(files["mlp_wide"])
    x = np.random.default_rng(8).standard_normal((1, WIDE_WIDTH)).astype(np.float32)
    expected = session.run(None, {"x": x})[0]
    plain = payloads.v2_binary("mlp_wide", "x", x, "y")
    batched = payloads.v2_binary("mlp_wide_batched", "x", x, "y")
    require(server, [plain, batched], expected)

    def raw(seconds: float) -> Row:
        return bench.raw("raw onnxruntime, wide MLP batch 1", session, {"x": x}, seconds)

    pairs = min(bench.pairs, 2)
    bench.paired("wide MLP v2 binary", server, plain, 8, raw, "raw", pairs=pairs)
    name = "wide MLP v2 binary, dynamic batching"
    bench.paired(name, server, batched, 8, raw, "raw", pairs=pairs)
    feeds = {"x": np.repeat(x, 8, axis=0)}
    bench.record(bench.raw("raw onnxruntime, wide MLP batch 8", session, feeds, bench.seconds))

    def rows_of_x(rows: int) -> dict[str, np.ndarray]:
        return {"x": np.repeat(x, rows, axis=0)}

    batching_rows(
        bench, server, session, "mlp_wide_batched", batched, rows_of_x, "wide MLP", pairs,
        bench.seconds,
    )  # fmt: skip


def mlp_section(bench: Bench, server: Process, files: dict[str, Path], logs: Path) -> None:
    """The small MLP through each front door, against the bare ASGI app (the HTTP ceiling)."""
    session = server_session(files["mlp"])
    x = payloads.mlp_input()
    expected = session.run(None, {"x": x})[0]
    requests = {
        "v2 JSON": payloads.v2_json("mlp", "x", x),
        "v2 binary": payloads.v2_binary("mlp", "x", x, "y"),
        "/predict JSON": payloads.predict_json("mlp", "x", x),
        "v1 JSON": payloads.v1_json("mlp", x),
        "v2 JSON, dynamic batching": payloads.v2_json("mlp_batched", "x", x),
    }
    require(server, list(requests.values()), expected)
    raw = bench.record(bench.raw("raw onnxruntime, MLP batch 1", session, {"x": x}, bench.seconds))
    with bare_asgi(logs / "bare.log") as bare:
        for concurrency in (1, 16, 64):

            def ceiling(seconds: float, c: int = concurrency) -> Row:
                request = requests["v2 JSON"]
                return bench.load("bare ASGI app", bare, request, c, seconds, kind="ceiling")

            names = list(requests) if concurrency == 16 else ["v2 JSON"]
            pairs = bench.pairs if concurrency == 16 else 1
            for payload in names:
                name = f"MLP {payload}"
                row = bench.paired(
                    name, server, requests[payload], concurrency, ceiling, "ceiling", pairs=pairs
                )
                row.ratios["raw"] = row.rows_per_second / raw.rows_per_second


def grpc_section(bench: Bench, server: Process, files: dict[str, Path], logs: Path) -> None:
    """The small MLP over gRPC, against a bare grpcio server answering the same bytes."""
    session = server_session(files["mlp"])
    x = payloads.mlp_input()
    expected = session.run(None, {"x": x})[0]
    requests = {
        "gRPC raw tensors": payloads.grpc_infer("mlp", "x", x, "y"),
        "gRPC raw tensors, dynamic batching": payloads.grpc_infer("mlp_batched", "x", x, "y"),
    }
    require(server, list(requests.values()), expected)
    first = requests["gRPC raw tensors"]
    answer = logs / "mlp-grpc-answer.bin"
    answer.write_bytes(payloads.grpc_answer(f"{HOST}:{server.grpc_port}", first))
    before = success_count(server, "mlp", "grpc") + success_count(server, "mlp_batched", "grpc")
    rows: list[Row] = []
    with bare_grpc(answer, logs / "bare-grpc.log") as bare:
        for concurrency in (1, 16, 64):

            def ceiling(seconds: float, c: int = concurrency) -> Row:
                return bench.load("bare grpcio server", bare, first, c, seconds, kind="ceiling")

            names = list(requests) if concurrency == 16 else ["gRPC raw tensors"]
            pairs = bench.pairs if concurrency == 16 else 1
            for payload in names:
                rows.append(
                    bench.paired(
                        f"MLP {payload}",
                        server,
                        requests[payload],
                        concurrency,
                        ceiling,
                        "ceiling",
                        pairs=pairs,
                    )
                )
    counted = (
        success_count(server, "mlp", "grpc") + success_count(server, "mlp_batched", "grpc") - before
    )
    sent = sum(r.requests for r in rows)
    cut = sum(r.concurrency * (bench.pairs if r.concurrency == 16 else 1) for r in rows)
    rows[-1].note = (
        f"the server counted {counted:.0f} gRPC successes for the {sent} calls h2load saw "
        f"answered (and at most {cut} more cut off at its deadlines)"
    )
    rows[-1].metrics_ok = sent <= counted <= sent + cut
    # The ceiling in the other setups grpcio offers, for comparison (one window each).
    for mode in ("aio", "threads"):
        with bare_grpc(answer, logs / f"bare-grpc-{mode}.log", mode) as other:
            name = f"bare grpcio server ({mode})"
            bench.record(bench.load(name, other, first, 16, bench.seconds, kind="ceiling"))


def success_count(process: Process, model: str, protocol: str | None = None) -> float:
    text = httpx.get(process.url + "/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "onnx_serve_request_success_total":
                if sample.labels.get("model") == model and protocol in (
                    None,
                    sample.labels.get("protocol"),
                ):
                    total += sample.value
    return total


def workers_section(bench: Bench, one: Process, repo: Path, logs: Path) -> None:
    """The MLP on one worker and on two, alternating; /metrics must add both up."""
    x = payloads.mlp_input()
    requests = {
        "v2 JSON": payloads.v2_json("mlp", "x", x),
        "/predict JSON": payloads.predict_json("mlp", "x", x),
    }
    with onnx_serve(repo, logs / "server-2-workers.log", workers=2) as two:
        require(two, list(requests.values()), one_answer(one, requests["v2 JSON"]))
        before = success_count(two, "mlp")
        rows: list[Row] = []
        for payload, request in requests.items():

            def single(seconds: float, r: Request = request, p: str = payload) -> Row:
                return bench.load(f"MLP {p}", one, r, 16, seconds)

            name = f"MLP {payload}"
            rows.append(bench.paired(name, two, request, 16, single, "1 worker", workers=2))
        # Requests wrk abandoned at its deadlines may still be answered, and each worker moves
        # its counts to the shared series every FLUSH_SECONDS.
        time.sleep(2 * FLUSH_SECONDS + 0.5)
        counted = success_count(two, "mlp") - before
        few_connections_rows(bench, one, two, logs / "server-2-workers.log")
    sent = sum(r.requests for r in rows)
    cut = 16 * bench.pairs * len(requests)
    last = rows[-1]
    last.note = (
        f"/metrics (both workers aggregated) counted {counted:.0f} successes for the {sent} "
        f"requests wrk saw answered (and at most {cut} more cut off at its deadlines)"
    )
    last.metrics_ok = sent <= counted <= sent + cut


def one_answer(process: Process, request: Request) -> np.ndarray:
    response = httpx.post(process.url + request.path, content=request.body, headers=request.headers)
    return next(iter(payloads.outputs_of(response).values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short windows, one pair each")
    parser.add_argument("--seconds", type=float, help="seconds a window (default 4; quick 2)")
    parser.add_argument("--pairs", type=int, help="windows per figure (default 3; quick 1)")
    parser.add_argument("--skip-resnet", action="store_true", help="leave out ResNet-50")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these sections (repeatable; default: all)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here as JSON")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    bench = Bench(seconds, args.pairs or (1 if args.quick else 3))
    if wrk_path() is None:
        print("wrk not found (apt-get install wrk): using the slower Python client", flush=True)
    print(machine(), flush=True)
    print(
        "Servers under test: the default configuration (log level info, access log on), as "
        "`make serve` starts them, unless a row says otherwise",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="onnx-serve-bench-") as tmp:
        root = Path(tmp)
        wanted = set(args.only or SECTIONS)
        served = wanted - {"optimize", "memory"}
        if served:
            repo = root / "models"
            skip = {name for name in REPOSITORY if name.startswith("resnet")}
            files = write_repository(repo, skip=skip if args.skip_resnet else None)
            mlp_repo = root / "mlp-models"
            write_repository(mlp_repo, only={"mlp"})
            with onnx_serve(repo, root / "server.log") as server:
                if not args.skip_resnet and "resnet" in wanted:
                    resnet_section(bench, server, files)
                if "wide" in wanted:
                    wide_section(bench, server, files)
                if "mlp" in wanted:
                    mlp_section(bench, server, files, root)
                if "log" in wanted:
                    log_section(bench, mlp_repo, root)
                if "grpc" in wanted:
                    grpc_section(bench, server, files, root)
                if "workers" in wanted:
                    workers_section(bench, server, mlp_repo, root)
        if "optimize" in wanted:
            optimize_section(bench, root)
        memory = memory_section(root) if "memory" in wanted else NOT_MEASURED
    print(f"\n{len(bench.rows)} rows in {time.monotonic() - started:.0f} s\n")
    print_table(bench.rows)
    print()
    print(targets(bench.rows))
    print("\n".join(optimize_targets(bench.rows)))
    print("\n".join(memory))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in bench.rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
