"""Bounds on what one decoded request may hold, whatever protocol carries it."""

from __future__ import annotations

from dataclasses import dataclass

#: The default bound on one response, estimated before it is encoded.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds every decoded request must respect."""

    #: Largest request body (REST) or message (gRPC).
    max_request_bytes: int = 64 * 1024 * 1024
    #: Most tensor elements in one request, all inputs together.
    max_elements: int = 64 * 1024 * 1024
    #: Deepest JSON nesting of a tensor's data.
    max_depth: int = 64
    #: Most input tensors in one request.
    max_inputs: int = 64
    #: Longest single BYTES element.
    max_bytes_element: int = 16 * 1024 * 1024
    #: Largest response, estimated from its outputs before encoding.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: Most JSON arrays and objects in one request body (checked before parsing it).
    max_json_containers: int = 1024 * 1024
