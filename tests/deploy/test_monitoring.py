"""A real Prometheus (Debian's binary) scrapes a running server while clients drive traffic;
then every PromQL expression of the Grafana dashboard and of the alert rules is asked of
Prometheus' HTTP API and must return data: no panel stays empty."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from tests.conftest import SAMPLE_MODELS
from tests.deploy.conftest import DOCKER, require_tool
from tests.onnx_models import OPSET, identity, looping, write_model
from tests.server import RunningServer, free_port

DASHBOARD = DOCKER / "grafana" / "dashboards" / "onnx-serve.json"
ALERTS = DOCKER / "prometheus" / "alerts.yml"
COMPOSE_PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
MODELS = ("digits", "faulty", "fallback", "retired")
# Loaded on demand, in turn: under the memory budget each evicts the other.
COLD = ("cold_a", "cold_b")
JOB = "onnx-serve"
KEY = "monitoring-test-key"
# What Grafana would put in place of its variables for this stack.
VARIABLES = {"$__rate_interval": "5m", "$model": "|".join(MODELS + COLD), "$job": JOB}
MIB = 1 << 20
THRESHOLD = re.compile(r"^(?P<signal>.*\S)\s*(?:>|<|==|!=|>=|<=)\s*[0-9.]+\s*$", re.DOTALL)


def reshape_to_fours() -> onnx.ModelProto:
    """``y = Reshape(x, [-1, 4])`` over ``x`` [N, K]: onnxruntime fails when N*K % 4 != 0,
    a model fault that input validation cannot see."""
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["shape"], value_ints=[-1, 4]),
            helper.make_node("Reshape", ["x", "shape"], ["y"]),
        ],
        "reshape_to_fours",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("monitoring") / "models"
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    config = json.loads((root / "digits" / "config.json").read_text())
    # Pinned: the cold models below evict each other, never these.
    config["dynamic_batching"] = {"max_queue_delay_us": 2000}
    config["pinned"] = True
    (root / "digits" / "config.json").write_text(json.dumps(config))
    pinned: dict[str, Any] = {"pinned": True}
    write_model(root, "faulty", reshape_to_fours(), config={"warmup": {"enabled": False}, **pinned})
    # A config written for an AMD GPU, deployed on a machine without one.
    write_model(
        root, "fallback", identity(),
        config={"providers": ["MIGraphXExecutionProvider"], **pinned},
    )  # fmt: skip
    write_model(root, "retired", identity(), config=pinned)
    # Not an ONNX model: its load fails (and nothing else).
    write_model(root, "broken", b"not a model")
    # 24 MiB each (unused weights) in a 40 MiB budget: one at a time.
    for name in COLD:
        write_model(root, name, looping(1, 24 * MIB), config={"load": "on_demand"})
    env = {"ONNX_SERVE_MANAGEMENT_API_KEY": KEY, "ONNX_SERVE_MEMORY_BUDGET": str(40 * MIB)}
    with RunningServer(root, env=env) as running:
        yield running


class Prometheus:
    """Debian's prometheus on a loopback port, scraping ``target`` every second."""

    def __init__(self, binary: str, target: str, directory: Path) -> None:
        config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS)]
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
        # The compose stack finds servers by DNS; here the one server is on loopback.
        job.pop("dns_sd_configs")
        job.pop("relabel_configs", None)
        job["static_configs"] = [{"targets": [target]}]
        config["scrape_configs"] = [job]
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = directory / "prometheus.log"

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.until(lambda: httpx.get(self.url + "/-/ready", timeout=1).status_code == 200, timeout)

    def until(self, check: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if check():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gave up after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n{r.text}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(self.url + path, params=params, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["data"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def traffic(rounds: int) -> list[tuple[str, dict[str, Any], int]]:
    """Requests (model, body, expected status): good ones to every model, model faults
    (runtime errors of "faulty") and client mistakes (a wrong shape for "digits")."""
    digits = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    vector = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    good = {
        "digits": {"inputs": [{"name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32",
                               "data": digits.ravel().tolist()}]},
        "faulty": {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                               "data": [1, 2, 3, 4]}]},
        "fallback": {"inputs": [vector]},
        "retired": {"inputs": [vector]},
    }  # fmt: skip
    runtime_fault = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                 "data": [1, 2, 3]}]}  # fmt: skip
    wrong_shape = {"inputs": [{"name": "image", "shape": [1, 4], "datatype": "FP32",
                               "data": [0, 0, 0, 0]}]}  # fmt: skip
    jobs = [(m, good[m], 200) for _ in range(rounds) for m in MODELS]
    jobs += [("faulty", runtime_fault, 500)] * rounds + [("digits", wrong_shape, 400)] * rounds
    return jobs


def cold_starts(url: str, rounds: int) -> None:
    """Alternate requests to the two cold models: each loads on demand, evicting the other."""
    body = {"inputs": [{"name": "x", "shape": [64, 64], "datatype": "FP32",
                        "data": [0.5] * 4096}]}  # fmt: skip
    for _ in range(rounds):
        for name in COLD:
            r = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
            assert r.status_code == 200, r.text
            assert r.headers["x-cold-start"] == "true"


def send(url: str, jobs: list[tuple[str, dict[str, Any], int]]) -> None:
    """Send ``jobs`` from 8 threads at once, checking each answer's status."""
    with httpx.Client(base_url=url, timeout=30) as client:

        def one(job: tuple[str, dict[str, Any], int]) -> None:
            model, body, expected = job
            r = client.post(f"/v2/models/{model}/infer", json=body)
            assert r.status_code == expected, (model, r.text)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, jobs))


@pytest.fixture(scope="module")
def prometheus(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    binary = require_tool("prometheus", "prometheus")
    instance = Prometheus(binary, server.host_port, tmp_path_factory.mktemp("prometheus"))
    try:
        instance.wait_ready()
        # A first request of each kind creates the series; once Prometheus holds them, the
        # bulk of the traffic makes every counter grow between two samples, so that rate()
        # and histogram_quantile() have something to say.
        send(server.url, traffic(rounds=1))
        cold_starts(server.url, rounds=1)
        instance.until(
            lambda: instance.query('onnx_serve_request_failure_total{reason="bad_request"}')
        )
        instance.until(lambda: instance.query("onnx_serve_model_evictions_total"))
        send(server.url, traffic(rounds=30))
        cold_starts(server.url, rounds=2)
        r = httpx.post(
            f"{server.url}/v2/repository/models/retired/unload",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert r.status_code == 200, r.text
        instance.until(lambda: instance.query('onnx_serve_model_ready{model="retired"} == 0'))
        instance.until(lambda: instance.query('onnx_serve_model_load_failed{model="broken"} == 1'))
        yield instance
    finally:
        instance.stop()


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_every_dashboard_query_returns_data(prometheus: Prometheus, panel: str, expr: str) -> None:
    result = prometheus.query(substitute(expr))
    assert has_data(result), f"panel '{panel}' would be empty: {substitute(expr)}\n{result}"


def test_dashboard_variables_list_the_job_and_models(prometheus: Prometheus) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    for name, wanted in (("job", {JOB}), ("model", set(MODELS))):
        call = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[name]["query"]["query"])
        assert call is not None and call[2] == name
        values = prometheus.api(f"/api/v1/label/{name}/values", **{"match[]": substitute(call[1])})
        assert wanted <= set(values), values


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_signal_returns_data(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    """Each rule is ``signal OP threshold``; the signal must be computable from what the
    server exports (an empty signal would mean an alert that can never fire)."""
    match = THRESHOLD.match(rule["expr"].strip())
    assert match, f"{rule['alert']}: expected 'signal OP threshold', got {rule['expr']}"
    assert has_data(prometheus.query(match["signal"])), match["signal"]


def test_alerts_fire_for_what_the_traffic_caused(prometheus: Prometheus) -> None:
    """The faulty model failed half its requests and a model failed to load: those two
    alerts' conditions hold, in Prometheus' own evaluation of the rule file too; the model
    unloaded on purpose fires nothing."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    ratio = prometheus.query(rules["OnnxServeHighErrorRatio"]["expr"])
    assert {s["metric"]["model"] for s in ratio} == {"faulty"}, ratio
    failed = prometheus.query(rules["OnnxServeModelLoadFailed"]["expr"])
    assert {(s["metric"]["model"], s["metric"]["version"]) for s in failed} == {("broken", "1")}

    def pending() -> bool:
        alerts = prometheus.api("/api/v1/alerts")["alerts"]
        return {"OnnxServeHighErrorRatio", "OnnxServeModelLoadFailed"} <= {
            a["labels"]["alertname"] for a in alerts
        }

    prometheus.until(pending, timeout=15)
    loaded = prometheus.api("/api/v1/rules")["groups"]
    evaluated = {r["name"]: r for group in loaded for r in group["rules"]}
    assert set(evaluated) == set(rules)
    for name, rule in evaluated.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
