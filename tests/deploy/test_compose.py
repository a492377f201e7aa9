"""The docker-compose stack and its monitoring files: the compose file is valid (checked
offline by docker-compose), Prometheus' config and rules pass promtool and the rules' unit
tests, and Grafana's provisioning points at what the stack mounts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DOCKER, ROOT, require_tool

COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "onnx-serve.json"


def run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with the GPU profile on."""
    tool = require_tool("docker-compose", "docker-compose")
    checked = run([tool, "-f", str(COMPOSE), "config", "-q"])
    assert checked.returncode == 0, checked.stderr
    resolved = run([tool, "-f", str(COMPOSE), "--profile", "gpu", "config"])
    assert resolved.returncode == 0, resolved.stderr
    config: dict[str, Any] = yaml.safe_load(resolved.stdout)
    return config


def test_compose_runs_the_server_prometheus_and_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"onnx-serve", "onnx-serve-gpu", "prometheus", "grafana"}
    cpu, gpu = services["onnx-serve"], services["onnx-serve-gpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile"
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert "profiles" not in cpu and gpu["profiles"] == ["gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for server in (cpu, gpu):
        assert server["read_only"] is True and server["tmpfs"] == ["/tmp"]
        assert server["cap_drop"] == ["ALL"]
        assert any(v.endswith(":/models:rw") for v in server["volumes"]), server["volumes"]
        assert {p["target"] for p in server["ports"]} == {8000, 8001}, "HTTP and gRPC"
    for service in services.values():
        if "image" in service and "build" not in service:
            tag = service["image"].partition(":")[2]
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"pin {service['image']}"


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"
    prometheus = compose["services"]["prometheus"]
    assert f"{PROMETHEUS}:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    checked = run([promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = run([promtool, "check", "rules", str(PROMETHEUS / "alerts.yml")])
    assert rules.returncode == 0 and "SUCCESS: 4 rules found" in rules.stdout, rules.stdout


def test_alert_rules_unit_tests() -> None:
    """Synthetic series that must (and must not) fire each alert, with its exact text."""
    promtool = require_tool("promtool", "prometheus")
    result = run([promtool, "test", "rules", "alerts_test.yml"], cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_server_service(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "onnx-serve"]
    (discovery,) = job["dns_sd_configs"]
    servers = {n for n, s in compose["services"].items() if "onnx-serve" in str(s.get("image"))}
    assert set(discovery["names"]) == servers
    assert discovery["port"] == 8000 and job["metrics_path"] == "/metrics"


def test_grafana_provisions_the_datasource_and_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if "/" in v)
    assert mounts[str(GRAFANA / "provisioning")] == "/etc/grafana/provisioning"
    assert mounts[str(GRAFANA / "dashboards")] == "/var/lib/grafana/dashboards"
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (prometheus,) = datasources
    assert prometheus["type"] == "prometheus" and prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "onnx-serve.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/" + DASHBOARD.name


def test_dashboard_shows_what_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "onnx-serve"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["model"]["multi"] and variables["model"]["includeAll"]
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "onnx_serve_request_duration_seconds_count",  # request rate
        "onnx_serve_request_failure_total",  # errors by reason
        "histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
        "onnx_serve_queue_duration_seconds", "onnx_serve_batch_size_bucket",
        "onnx_serve_inflight_requests", "onnx_serve_queue_depth",
        "onnx_serve_model_ready", "onnx_serve_model_provider_fallback",
        "onnx_serve_model_load_failed",
        "onnx_serve_model_memory_bytes", "onnx_serve_memory_budget_bytes",
        "onnx_serve_model_loads_total", "onnx_serve_model_evictions_total",
    ):  # fmt: skip
        assert needed in exprs, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            per_process = panel["title"] in {
                "CPU", "Memory", "Threads and sessions", "Memory budget use",
            }  # fmt: skip
            # A model that never loaded has no ready series, so the model variable (made from
            # those) cannot list it: the load-failure table shows every model.
            every_model = panel["title"] == "Load failures"
            assert per_process or every_model or 'model=~"$model"' in target["expr"], target
            assert 'job=~"$job"' in target["expr"], target
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
