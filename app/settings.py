"""Service settings, read from the environment with the ``ONNX_SERVE_`` prefix."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

_AMOUNT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(%|[KMGT]i?B?|B)?\s*", re.IGNORECASE)


def parse_amount(text: str) -> tuple[float, bool]:
    """A memory amount: (bytes, False), or (percent, True) for a value like ``'80%'``."""
    found = _AMOUNT.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not a number of bytes (K, M, G, Ki, Mi, Gi...) or a %")
    number, unit = float(found[1]), (found[2] or "").upper()
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError(f"{text!r}: a percentage must be above 0 and at most 100")
        return number, True
    power = "KMGT".index(unit[0]) + 1 if unit[:1] in ("K", "M", "G", "T") else 0
    scale = (1024 if "I" in unit else 1000) ** power
    if number * scale < 1:
        raise ValueError(f"{text!r}: the amount must be at least one byte")
    return number * scale, False


class Settings(BaseSettings):
    """Every knob of the server; each field is also an ``ONNX_SERVE_<FIELD>`` variable."""

    model_config = SettingsConfigDict(env_prefix="ONNX_SERVE_", extra="ignore")

    model_repository: Path = Field(
        Path("models"), description="Directory holding <name>/<version>/model.onnx."
    )
    model_name: str | None = Field(
        None,
        description="Serve the repository root as one model with this name: model.onnx at the "
        "root is version 1, else <version>/model.onnx (KServe's /mnt/models layout).",
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the HTTP server.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="TCP port of the gRPC server (inference.GRPCInferenceService, health, "
        "reflection), on the same address; 0 turns gRPC off.",
    )
    workers: int = Field(1, ge=1, description="Number of uvicorn worker processes.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the service and the access log."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: text, or one JSON object a line."
    )
    access_log: bool = Field(
        True, description="Log one line per request (at info level) with its request id."
    )
    server_name: str = Field("onnx-serve", description="Name reported by GET /v2.")

    require_accelerator: bool = Field(
        False,
        description="Fail a model load when a requested GPU provider silently falls back to CPU.",
    )
    default_providers: str = Field(
        "auto",
        description="Providers for models whose config names none: 'auto' "
        "(TensorRT -> CUDA -> CPU, as available), 'cpu', or a comma-separated list.",
    )
    preload_cuda: bool = Field(
        False,
        description="Load CUDA and cuDNN from the nvidia pip packages at start (the GPU image "
        "sets this).",
    )
    cpu_quota: int | None = Field(
        None,
        ge=1,
        description="CPUs the process may use; detected from cgroup cpu.max or affinity if unset.",
    )

    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_upload_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024, description="Largest model upload accepted (413 above)."
    )
    max_tensor_elements: int = Field(
        64 * 1024 * 1024, ge=1, description="Most elements in one request's tensors in total."
    )
    max_json_depth: int = Field(64, ge=2, description="Deepest JSON nesting accepted.")
    max_inputs: int = Field(64, ge=1, description="Most input tensors in one request.")
    max_bytes_element: int = Field(
        16 * 1024 * 1024, ge=1, description="Longest single BYTES tensor element."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image in pixels (decompression bombs)."
    )
    max_json_containers: int = Field(
        1024 * 1024,
        ge=1,
        description="Most JSON arrays and objects in one request body, counted before it is "
        "parsed (each costs about 100 bytes of memory once parsed; send large tensors flat or "
        "binary).",
    )
    json_decode_processes: int = Field(
        1,
        ge=1,
        description="Worker processes that decode JSON bodies over 256 KiB (started when "
        "first needed), so that no body holds up the event loop while it is parsed.",
    )
    max_response_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Largest inference response, estimated from its outputs before encoding "
        "(400, gRPC RESOURCE_EXHAUSTED, above).",
    )
    max_decoded_image_bytes: int = Field(
        160 * 1024 * 1024,
        ge=1024,
        description="Most memory one image may take once decoded: pixels times the bytes a "
        "pixel of its mode takes (16-bit and alpha images count double or more); 413 above.",
    )
    max_request_image_pixels: int = Field(
        160_000_000,
        ge=1,
        description="Most pixels of all the images of one request together (413 above).",
    )
    image_decode_concurrency: int = Field(
        2,
        ge=1,
        description="Images decoded at once (each on its own thread); others wait their turn.",
    )
    max_queued_requests: int = Field(
        128,
        ge=0,
        description="Requests that may wait for a free session of a model without dynamic "
        "batching; more get 503 with Retry-After (0: no limit).",
    )
    model_load_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="Longest a model version may take to load (sessions built, warmed up); "
        "past it the version is UNAVAILABLE and the others serve. Load-time optimisation "
        "has its own limit (optimize.timeout_seconds) on top.",
    )
    model_warmup_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest the warm-up runs of a version, and the test run of an uploaded "
        "model, may take; such a run is stopped and the model refused.",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest HTTP request head (request line and headers; 431 above), and "
        "gRPC metadata.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A connection whose request head has not fully arrived this long after "
        "the connection (or the request) began is closed (slow-header clients).",
    )
    body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="A request body that receives no bytes for this long is abandoned and "
        "its connection closed.",
    )
    keep_alive_seconds: float = Field(
        5.0,
        gt=0,
        description="An idle keep-alive connection (HTTP) is closed after this long; gRPC "
        "closes connections idle for 60 times as long.",
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="Most open HTTP connections; more are answered 503 and closed. Lowered "
        "at start to fit the process's open-file limit (which is raised to its hard limit).",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="Proxies (comma-separated addresses or networks, or *) whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed for the client address; by "
        "default none is.",
    )
    default_timeout_us: int = Field(
        0, ge=0, description="Default time a request may wait in a model queue; 0 means no limit."
    )

    management_api_key: SecretStr | None = Field(
        None, description="Key for upload/load/unload/delete/index (Bearer or X-API-Key)."
    )
    inference_api_key: SecretStr | None = Field(
        None, description="Optional key required on inference endpoints."
    )
    allow_open_management: bool = Field(
        False,
        description="Serve management endpoints without a key (logs a warning at start).",
    )
    repository_poll_seconds: float = Field(
        0.0, ge=0.0, description="Poll the repository for changes this often; 0 disables."
    )
    otel_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP endpoint to export request traces to (a base URL; /v1/traces "
        "is added); unset: the standard OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing. Needs "
        "the tracing extra (pip install 'onnx-serve[tracing]').",
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0.0, description="How long in-flight requests may finish after SIGTERM."
    )

    memory_budget: str | None = Field(
        None,
        description="Resident memory the loaded model versions may take together: bytes "
        "(suffixes K, M, G, Ki, Mi, Gi allowed) or a percentage of the container's memory "
        "limit (cgroup; the machine's memory without one), shared by the workers. Loads over "
        "it evict the least recently used idle, unpinned versions first. Unset: no budget.",
    )
    gpu_memory_budget: str | None = Field(
        None,
        description="Device memory the loaded model versions may take on each GPU: bytes or "
        "a percentage of the device's memory, shared by the workers. Unset: no budget.",
    )
    load_on_demand: bool = Field(
        False,
        description="Load models whose config.json sets no 'load' on their first request "
        "instead of at start (for large repositories).",
    )

    @field_validator("management_api_key", "inference_api_key")
    @classmethod
    def _strip_key(cls, key: SecretStr | None) -> SecretStr | None:
        # Keys read from files often end in a newline; clients' keys are trimmed too.
        return None if key is None else SecretStr(key.get_secret_value().strip())

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.management_api_key is not None and not self.management_api_key.get_secret_value():
            raise ValueError("management_api_key must not be empty or only whitespace")
        if self.inference_api_key is not None and not self.inference_api_key.get_secret_value():
            raise ValueError("inference_api_key must not be empty or only whitespace")
        if self.management_api_key is not None and self.allow_open_management:
            raise ValueError("set either management_api_key or allow_open_management, not both")
        if self.max_upload_bytes < 1024:
            raise ValueError("max_upload_bytes is too small")
        for name in ("memory_budget", "gpu_memory_budget"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_amount(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return self
