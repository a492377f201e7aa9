"""OpenTelemetry traces of requests, exported over OTLP/HTTP; off unless an endpoint is set.

With ``ONNX_SERVE_OTEL_ENDPOINT`` (or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``) set and
the ``tracing`` extra installed, each request gets a server span: a child of the W3C
``traceparent`` it came with (a new trace otherwise), whose own ``traceparent`` goes back on
the response (HTTP header, gRPC initial metadata). An inference adds the spans of its steps,
made afterwards from their measured times (``Phases``): ``preprocess`` (decoding and
validating its inputs), ``queue`` (waiting for a session or batch), ``run`` (the session run)
and ``encode`` (its answer), with the model, version and batch size as attributes. Spans go
out in batches from a background thread; the standard ``OTEL_*`` variables (service name,
sampler, headers) apply.

When tracing is off nothing here is built, and a request pays one ``is None`` test in each
front end and in the data plane. OpenTelemetry is imported only when tracing is on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from app import __version__
from app.inference.context import Phases
from app.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

STANDARD_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_PATH = "/v1/traces"
TRACE_HEADERS = ("traceparent", "tracestate")


def endpoint(settings: Settings) -> str | None:
    """The OTLP/HTTP traces URL: the setting, else the standard variable (a base URL)."""
    base = settings.otel_endpoint or os.environ.get(STANDARD_ENDPOINT)
    if not base:
        return None
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class RequestSpan:
    """The server span of one request; the data plane adds its inference steps to it."""

    __slots__ = ("span", "_tracer", "_context", "_offset_ns")

    def __init__(self, tracer: Tracer, span: Span) -> None:
        from opentelemetry import trace

        self.span = span
        self._tracer = tracer
        self._context = trace.set_span_in_context(span)
        # perf_counter instants (what ``Phases`` holds) to wall-clock nanoseconds.
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def _ns(self, instant: float) -> int:
        return int(instant * 1e9) + self._offset_ns

    def phases(self, model: str, version: str, rows: int, phases: Phases) -> None:
        attributes: dict[str, str | int] = {
            "onnx_serve.model": model,
            "onnx_serve.model.version": version,
            "onnx_serve.batch_size": rows,
        }
        self.span.set_attributes(attributes)
        queue_end = phases.prepared + phases.queued
        steps = (
            ("preprocess", phases.started, phases.prepared),
            ("queue", phases.prepared, queue_end),
            ("run", queue_end, queue_end + phases.computed),
            ("encode", phases.ran, phases.encoded),
        )
        for name, start, end in steps:
            child = self._tracer.start_span(
                name, context=self._context, start_time=self._ns(start), attributes=attributes
            )
            child.end(end_time=self._ns(end))

    def traceparent(self) -> str:
        """The W3C ``traceparent`` of this span, for the response."""
        context = self.span.get_span_context()
        flags = int(context.trace_flags)
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"

    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"

    def finish(self, name: str, status: int | None = None, error: str | None = None) -> None:
        """End the span, named after the route; 5xx (or a gRPC error) marks it an error."""
        from opentelemetry.trace import Status, StatusCode

        self.span.update_name(name)
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        if error is not None or (status is not None and status >= 500):
            self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()


class Tracing:
    """The process's tracer provider, exporting through ``exporter``."""

    def __init__(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        from opentelemetry.propagators.textmap import DefaultGetter
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        resource = Resource.create({SERVICE_NAME: "onnx-serve", SERVICE_VERSION: __version__})
        self.provider: TracerProvider = TracerProvider(resource=resource)
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("onnx_serve", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._getter = DefaultGetter()

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """Tracing to the configured OTLP endpoint, or None (no endpoint, or no SDK)."""
        url = endpoint(settings)
        if url is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning(
                "an OTLP endpoint is set but OpenTelemetry is not installed: pip install "
                "'onnx-serve[tracing]'; requests are not traced"
            )
            return None
        log.info("tracing requests to %s", url)
        return cls(OTLPSpanExporter(endpoint=url))

    def start(
        self, name: str, carrier: dict[str, str], attributes: dict[str, Any], kind: str = "server"
    ) -> RequestSpan:
        """A server span, child of the trace context in ``carrier`` (headers) if any."""
        from opentelemetry.trace import SpanKind

        parent = self._propagator.extract(carrier, getter=self._getter)
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return RequestSpan(self.tracer, span)

    def shutdown(self) -> None:
        """Export what is left and stop the export thread."""
        self.provider.shutdown()


def trace_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The W3C trace context headers among raw ASGI headers."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name in (b"traceparent", b"tracestate"):
            found[name.decode()] = value.decode("latin-1")
    return found
