"""OpenTelemetry traces: W3C traceparent in and out, a span per inference step, exported.

In process with the SDK's in-memory exporter (every span and its timing), and with a real
server process exporting over OTLP/HTTP to a receiver on loopback that decodes the protobuf
export requests, for REST and gRPC, with the trace ids in the JSON logs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.main import create_app
from app.settings import Settings
from app.tracing import Tracing, endpoint
from tests.onnx_models import mlp, write_model
from tests.server import RunningServer, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STEPS = ["preprocess", "queue", "run", "encode"]
INFER = {
    "inputs": [
        {"name": "x", "shape": [2, 16], "datatype": "FP32", "data": [0.5] * 32},
    ]
}


def models(root: Path) -> Path:
    write_model(root, "mlp", mlp())
    return root


def test_endpoint_from_the_setting_or_the_standard_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert endpoint(Settings()) is None
    assert endpoint(Settings(otel_endpoint="http://c:4318/")) == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://std:4318")
    assert endpoint(Settings()) == "http://std:4318/v1/traces"
    assert endpoint(Settings(otel_endpoint="http://c/v1/traces")) == "http://c/v1/traces"


def test_spans_of_an_inference_in_memory(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = Settings(model_repository=models(tmp_path), grpc_port=0)
    app = create_app(settings, tracing=Tracing(exporter, batch=False))

    async def requests() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                # Models load in the background once the app has started.
                while (await client.get("/v2/health/ready")).status_code != 200:
                    await asyncio.sleep(0.01)
                headers = {"traceparent": TRACEPARENT}
                infer = await client.post("/v2/models/mlp/infer", json=INFER, headers=headers)
                return infer, await client.get("/v2/models/nope")

    r, missing = asyncio.run(requests())
    assert r.status_code == 200, r.text
    out = r.headers["traceparent"].split("-")
    assert missing.status_code == 404
    # The answer names the server span: same trace, a span id of its own.
    assert out[1] == TRACE_ID and out[2] != PARENT_ID
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == "POST /v2/models/{model_name}/infer"]
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert f"{server.context.span_id:016x}" == out[2]
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["onnx_serve.model"] == "mlp"
    assert server.attributes["onnx_serve.batch_size"] == 2
    steps = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id),
        key=lambda s: s.start_time,
    )
    assert [s.name for s in steps] == STEPS
    for step in steps:
        assert step.context.trace_id == server.context.trace_id
        assert step.attributes["onnx_serve.model.version"] == "1"
        assert server.start_time <= step.start_time <= step.end_time <= server.end_time
    # A request without a traceparent starts a trace of its own.
    (lookup,) = [s for s in spans if s.name == "GET /v2/models/{model_name}"]
    assert lookup.parent is None and f"{lookup.context.trace_id:032x}" != TRACE_ID


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: keeps the spans of every export request it decodes."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", free_port()), ReceiverHandler)


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.server.spans.append(
                            {
                                "path": self.path,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {
                                    a.key: a.value.string_value or a.value.int_value
                                    for a in span.attributes
                                },
                            }
                        )
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_spans_exported_over_otlp_http(
    receiver: Receiver, tmp_path: Path, start_server: Any
) -> None:
    log = tmp_path / "server.log"
    env = {
        "ONNX_SERVE_OTEL_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "ONNX_SERVE_LOG_FORMAT": "json",
        "ONNX_SERVE_LOG_LEVEL": "info",
    }
    server: RunningServer = start_server(models(tmp_path / "models"), env=env, log_path=log)
    r = httpx.post(
        f"{server.url}/v2/models/mlp/infer", json=INFER, headers={"traceparent": TRACEPARENT}
    )
    assert r.status_code == 200, r.text
    rest_span = r.headers["traceparent"].split("-")[2]
    client = grpcclient.InferenceServerClient(server.grpc_address)
    x = grpcclient.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    grpc_trace = "0af7651916cd43dd8448eb211c80319c"
    client.infer("mlp", [x], headers={"traceparent": f"00-{grpc_trace}-b7ad6b7169203331-01"})

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with receiver.lock:
            names = [s["name"] for s in receiver.spans]
        if names.count("run") >= 2 and any("ModelInfer" in n for n in names):
            break
        time.sleep(0.1)
    spans = list(receiver.spans)
    assert {s["path"] for s in spans} == {"/v1/traces"}
    (rest,) = [s for s in spans if s["name"] == "POST /v2/models/{model_name}/infer"]
    assert rest["trace_id"] == TRACE_ID and rest["parent"] == PARENT_ID
    assert rest["span_id"] == rest_span
    assert [s["name"] for s in spans if s["parent"] == rest["span_id"]] == STEPS
    (grpc_span,) = [s for s in spans if s["name"].endswith("/ModelInfer")]
    assert grpc_span["trace_id"] == grpc_trace and grpc_span["parent"] == "b7ad6b7169203331"
    grpc_steps = [s for s in spans if s["parent"] == grpc_span["span_id"]]
    assert sorted(s["name"] for s in grpc_steps) == sorted(STEPS)
    assert all(s["attributes"]["onnx_serve.batch_size"] == 1 for s in grpc_steps)

    # The access log line of the REST request carries its request id and trace id.
    server.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (access,) = [line for line in lines if line.get("path") == "/v2/models/mlp/infer"]
    assert access["trace_id"] == TRACE_ID
    assert access["request_id"] == r.headers["x-request-id"]
