"""Many models under a memory budget: churn, cold starts, and a hot model that stays.

- 40 small MLPs (about 4.4 MB of weights each), every one loaded on demand, and a budget that
  fits 8 of them (measured: one is loaded first and its figure read back). Four clients ask
  for models at random, and a fifth asks for a "hot" 41st model without pause. Every answer
  is checked against numpy; the server's resident memory is sampled every 50 ms and held to
  the budget plus a stated overhead: the resident memory of the server once started (nothing
  loaded) plus ``OVERHEAD_MIB``. At the end, loads minus evictions must equal what the
  repository index shows loaded, and the hot model must have been loaded once and never
  evicted.
- The bundled digits model loaded on demand through HTTP (the first request's wall time, the
  model made AVAILABLE again with unload + load between tries), against the same load made
  in this process (``load_served_version``, what the server calls), medians of 5.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from app.optimize.loading import load_served_version
from app.registry.repository import ModelRepository
from bench.models import mlp
from bench.processes import ROOT, Process, onnx_serve

MODELS = 40
FITS = 8
CHURN_CLIENTS = 4
CHURN_REQUESTS = 1200
INPUTS, HIDDEN, CLASSES = 256, 4096, 10
#: The stated overhead beyond the budget and the idle server's own resident memory:
#: onnxruntime's start (about 8 MiB), request buffers, allocator slack.
OVERHEAD_MIB = 64
COLD_TRIES = 5
KEY = "bench-memory-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1 << 20


@dataclass
class ChurnResult:
    requests: int = 0
    hot_requests: int = 0
    server_errors: int = 0
    other_errors: int = 0
    wrong: int = 0
    cold_answers: int = 0
    rss_samples: list[int] = field(default_factory=list)


def _weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    model = mlp(INPUTS, HIDDEN, CLASSES, seed)
    w1, w2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    return w1, w2


def _write(root: Path, names: dict[str, int]) -> None:
    for name, seed in names.items():
        folder = root / name / "1"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(mlp(INPUTS, HIDDEN, CLASSES, seed).SerializeToString())
        (root / name / "config.json").write_text('{"load": "on_demand"}')


def _rss(process: Process) -> int:
    assert process.process is not None
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _counters(url: str) -> dict[str, dict[str, float]]:
    """loads and evictions by model (summed over versions and reasons)."""
    out: dict[str, dict[str, float]] = {"loads": {}, "evictions": {}, "demand": {}}
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for kind in ("loads", "evictions"):
                if sample.name == f"onnx_serve_model_{kind}_total":
                    model = sample.labels["model"]
                    out[kind][model] = out[kind].get(model, 0) + sample.value
                    if sample.labels.get("reason") == "demand":
                        out["demand"][model] = out["demand"].get(model, 0) + sample.value
    return out


def _server(repo: Path, log: Path, budget: int | None) -> Process:
    args = ["--memory-budget", str(budget)] if budget is not None else []
    return onnx_serve(repo, log, args=args, env={"ONNX_SERVE_MANAGEMENT_API_KEY": KEY})


def _measure_one(root: Path) -> int:
    """What one of the MLPs is counted for, read from a server that loaded it."""
    repo = root / "memory-probe"
    _write(repo, {"probe": 0})
    with _server(repo, root / "memory-probe.log", None) as server:
        body = _body(np.zeros((1, INPUTS), np.float32))
        assert httpx.post(server.url + "/v2/models/probe/infer", json=body, timeout=60).is_success
        meta = httpx.get(server.url + "/v2/models/probe", timeout=30).json()
    return int(meta["memory"]["host_bytes"])


def _body(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}  # fmt: skip


def _mark(met: bool) -> str:
    return "met " if met else "MISS"


def churn(root: Path) -> tuple[list[str], list[str]]:
    """The churn's report lines and its two targets."""
    cost = _measure_one(root)
    budget = int(cost * (FITS + 0.5))
    names = {f"m{i:02d}": i for i in range(MODELS)}
    repo = root / "memory-models"
    _write(repo, {**names, "hot": 1000})
    weights = {name: _weights(seed) for name, seed in {**names, "hot": 1000}.items()}
    result = ChurnResult()
    lock = threading.Lock()
    stop = threading.Event()
    with _server(repo, root / "memory.log", budget) as server:
        baseline = _rss(server)

        def sample() -> None:
            while not stop.is_set():
                result.rss_samples.append(_rss(server))
                time.sleep(0.05)

        def ask(client: httpx.Client, name: str, rng: np.random.Generator) -> None:
            x = rng.standard_normal((1, INPUTS)).astype(np.float32)
            w1, w2 = weights[name]
            r = client.post(f"/v2/models/{name}/infer", json=_body(x))
            with lock:
                if name == "hot":
                    result.hot_requests += 1
                else:
                    result.requests += 1
                if r.status_code >= 500:
                    result.server_errors += 1
                    print(f"    {name}: {r.status_code} {r.text}", flush=True)
                    return
                if r.status_code != 200:
                    result.other_errors += 1
                    return
                result.cold_answers += r.headers.get("x-cold-start") == "true"
                y = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(1, CLASSES)
                if not np.allclose(y, np.maximum(x @ w1, 0) @ w2, rtol=1e-3, atol=1e-3):
                    result.wrong += 1

        def churner(seed: int) -> None:
            rng = np.random.default_rng(seed)
            choices = list(names)
            with httpx.Client(base_url=server.url, timeout=120) as client:
                for _ in range(CHURN_REQUESTS // CHURN_CLIENTS):
                    ask(client, choices[rng.integers(len(choices))], rng)

        def hot() -> None:
            rng = np.random.default_rng(99)
            with httpx.Client(base_url=server.url, timeout=120) as client:
                while not stop.is_set():
                    ask(client, "hot", rng)

        started = time.monotonic()
        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(CHURN_CLIENTS + 1) as pool:
            hot_client = pool.submit(hot)
            list(pool.map(churner, range(CHURN_CLIENTS)))
            stop.set()
            hot_client.result()
        sampler.join()
        seconds = time.monotonic() - started
        counters = _counters(server.url)
        index = httpx.post(server.url + "/v2/repository/index", json={}, headers=AUTH).json()
    loaded = {e["name"] for e in index if e["state"] == "READY"}
    loads, evictions = counters["loads"], counters["evictions"]
    matched = all(
        loads.get(n, 0) - evictions.get(n, 0) == (1 if n in loaded else 0) for n in [*names, "hot"]
    )
    peak = max(result.rss_samples)
    allowed = baseline + budget + OVERHEAD_MIB * MIB
    demand = sum(counters["demand"].values())
    clean = result.server_errors == 0 and result.wrong == 0 and matched and peak <= allowed
    hot_kept = loads.get("hot", 0) == 1 and evictions.get("hot", 0) == 0
    targets = [
        f"  [{_mark(clean)}] 40 models, budget fits 8: {result.server_errors} 5xx, "
        f"{result.wrong} wrong answers, counters match: {matched}, peak resident memory "
        f"{'within' if peak <= allowed else 'OVER'} budget + idle + {OVERHEAD_MIB} MiB "
        f"({(peak - baseline - budget) / MIB:.1f} MiB used)",
        f"  [{_mark(hot_kept)}] hot model never evicted while 40 others churn: loaded "
        f"{loads.get('hot', 0):.0f}x, evicted {evictions.get('hot', 0):.0f}x",
    ]
    return [
        f"  40 models, budget {budget / MIB:.1f} MiB (8.5 x {cost / MIB:.2f} MiB measured for "
        f"one), {CHURN_CLIENTS} clients at random + 1 on the hot model, {seconds:.0f} s:",
        f"    requests {result.requests} + hot {result.hot_requests}; 5xx {result.server_errors}"
        f", other errors {result.other_errors}, wrong answers {result.wrong}",
        f"    loads {sum(loads.values()):.0f} (on demand {demand:.0f}), evictions "
        f"{sum(evictions.values()):.0f}, loaded at the end {len(loaded)}; loads - evictions "
        f"= loaded for every model: {matched}; answers that waited for a load "
        f"{result.cold_answers}",
        f"    resident memory: idle server {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB; "
        f"peak - idle - budget = {(peak - baseline - budget) / MIB:.1f} MiB "
        f"(stated overhead {OVERHEAD_MIB} MiB): {'within' if peak <= allowed else 'OVER'}",
        f"    hot model: loaded {loads.get('hot', 0):.0f}x, evicted {evictions.get('hot', 0):.0f}x",
    ], targets


def cold_start(root: Path) -> tuple[list[str], list[str]]:
    """The cold start's report line and its target."""
    repo = root / "memory-digits"
    shutil.copytree(ROOT / "models" / "digits", repo / "digits")
    config = (repo / "digits" / "config.json").read_text().rstrip()
    (repo / "digits" / "config.json").write_text(config[:-1] + ', "load": "on_demand"}')
    repository = ModelRepository(repo)
    in_process = []
    for _ in range(COLD_TRIES):
        start = time.perf_counter()
        model = load_served_version(
            "digits", 1, repository.model_file("digits", 1), repository.config("digits"),
            model_dir=repository.model_dir("digits"), default_providers="auto",
            require_accelerator=False, cpu_quota=2, labels=repository.labels("digits"),
        )  # fmt: skip
        in_process.append(time.perf_counter() - start)
        model.pool.retire(0)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8],
                        "data": [0.0] * 64}]}  # fmt: skip
    cold = []
    with (
        _server(repo, root / "memory-digits.log", None) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        for _ in range(COLD_TRIES):
            start = time.perf_counter()
            r = client.post("/v2/models/digits/infer", json=body)
            cold.append(time.perf_counter() - start)
            assert r.status_code == 200 and r.headers["x-cold-start"] == "true", r.text
            for step in ("unload", "load"):  # back to AVAILABLE
                done = client.post(f"/v2/repository/models/digits/{step}", headers=AUTH)
                assert done.status_code == 200, done.text
    load = statistics.median(in_process)
    http = statistics.median(cold)
    ratio = http / load
    line = (
        f"  digits cold start through HTTP: median {http * 1000:.1f} ms; its load in process "
        f"{load * 1000:.1f} ms"
    )
    target = (
        f"  [{_mark(ratio <= 3)}] digits cold start through HTTP <= 3x its load in process: "
        f"{ratio:.2f}x"
    )
    return [line], [target]


#: The targets' lines when the section did not run.
NOT_MEASURED = [
    "  [ -- ] 40 models, budget fits 8: not measured",
    "  [ -- ] digits cold start through HTTP <= 3x its load in process: not measured",
    "  [ -- ] hot model never evicted while 40 others churn: not measured",
]


def memory_section(root: Path) -> list[str]:
    """Run both measurements, print their report; returns the targets, met or missed."""
    print("memory budget and loads on demand:", flush=True)
    lines, cold_target = cold_start(root)
    for line in lines:
        print(line, flush=True)
    lines, churn_targets = churn(root)
    for line in lines:
        print(line, flush=True)
    return [churn_targets[0], *cold_target, churn_targets[1]]
