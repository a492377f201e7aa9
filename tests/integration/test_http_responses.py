"""Every HTTP answer is counted by route template and status: 401, 404 and 413 on any route
show in Prometheus, and raw paths never become labels."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SAMPLE_MODELS, StartServer


def answers(url: str) -> dict[tuple[str, str, str], float]:
    text = httpx.get(f"{url}/metrics").text
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "onnx_serve_http_responses"
    ]
    return {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }


def test_answers_by_route_and_status(start_server: StartServer) -> None:
    env = {
        "ONNX_SERVE_MANAGEMENT_API_KEY": "k" * 16,
        "ONNX_SERVE_MAX_REQUEST_BYTES": "2048",
    }
    server = start_server(SAMPLE_MODELS, env=env)
    url = server.url
    assert httpx.get(f"{url}/models").status_code == 401
    assert httpx.get(f"{url}/v2/models/nope-1").status_code == 404
    assert httpx.get(f"{url}/v2/models/nope-2").status_code == 404
    assert httpx.get(f"{url}/no/such/path").status_code == 404
    big = httpx.post(f"{url}/predict", content=b"{" + b" " * 4096 + b"}")
    assert big.status_code == 413
    assert httpx.post(f"{url}/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    counted = answers(url)
    assert counted[("GET", "/models", "401")] == 1
    assert counted[("GET", "/v2/models/{model_name}", "404")] == 2
    assert counted[("GET", "unmatched", "404")] == 1
    assert counted[("POST", "/predict", "413")] == 1
    assert counted[("POST", "/v2/models/{model_name}/infer", "404")] == 1
    assert not any("nope" in route or "/no/" in route for _, route, _ in counted)
