"""Domain errors that carry the HTTP status and the gRPC status they map to; no framework import.

``grpc_status`` is the name of a ``grpc.StatusCode`` member, so that this module needs no gRPC.
"""

from __future__ import annotations

import re
from http import HTTPStatus

# An absolute POSIX path (not a URL's, nor "N/A"): at least one folder, then a name.
_PATH = re.compile(r"(?<![\w.~:/-])/(?:[\w.@+~=,-]+/)+([\w.@+~=,-]+)")


def hide_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part.

    Errors of onnxruntime, onnx and the filesystem name the server's files (the repository's
    location, staging folders named after the host and process); clients see which file,
    never where it lives.
    """
    return _PATH.sub(r"\1", text)


class ServingError(Exception):
    """Base of every error the service reports to a client as ``{"error": message}``."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    #: The ``grpc.StatusCode`` name the gRPC front end answers with.
    grpc_status: str = "INVALID_ARGUMENT"
    #: Short, bounded label for the failure metric.
    reason: str = "bad_request"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(ServingError):
    status = HTTPStatus.BAD_REQUEST
    reason = "bad_request"


class InvalidName(BadRequest):
    reason = "invalid_name"


class InvalidImage(BadRequest):
    """Bytes that are not an image, or a truncated or corrupt one."""

    reason = "invalid_image"


class Unauthorized(ServingError):
    status = HTTPStatus.UNAUTHORIZED
    grpc_status = "UNAUTHENTICATED"
    reason = "unauthorized"


class InvalidKey(Unauthorized):
    """A key was presented and does not match (gRPC tells this apart from a missing key)."""

    grpc_status = "PERMISSION_DENIED"


class Forbidden(ServingError):
    status = HTTPStatus.FORBIDDEN
    grpc_status = "PERMISSION_DENIED"
    reason = "forbidden"


class ModelNotFound(ServingError):
    status = HTTPStatus.NOT_FOUND
    grpc_status = "NOT_FOUND"
    reason = "not_found"


class Conflict(ServingError):
    status = HTTPStatus.CONFLICT
    grpc_status = "ALREADY_EXISTS"
    reason = "conflict"


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "too_large"


class UnsupportedMediaType(ServingError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    reason = "unsupported_media_type"


class ResponseTooLarge(ServingError):
    """The outputs asked for would make a response over the server's limit."""

    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "response_too_large"


class InvalidModel(ServingError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    reason = "invalid_model"


class InsufficientStorage(ServingError):
    """The model repository has no room (or no write access) for an upload."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    grpc_status = "RESOURCE_EXHAUSTED"
    reason = "insufficient_storage"


class QueueFull(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_status = "UNAVAILABLE"
    reason = "queue_full"


class ModelNotReady(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_status = "UNAVAILABLE"
    reason = "not_ready"


class ModelNotLoaded(ModelNotReady):
    """A known model (or version) that loads on demand and is not loaded now.

    The data plane answers it by loading the model; it reaches a client only from a call
    that does not load models (its message then says so).
    """

    reason = "not_loaded"


class MemoryBudgetExceeded(ServingError):
    """A load that the memory budget cannot hold, even after evicting what can be evicted."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_status = "UNAVAILABLE"
    reason = "memory_budget"


class ShuttingDown(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_status = "UNAVAILABLE"
    reason = "shutting_down"


class QueueTimeout(ServingError):
    status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_status = "DEADLINE_EXCEEDED"
    reason = "timeout"


class LoadTimeout(QueueTimeout):
    """A request's timeout ran out while the model it asked for was loading on demand."""

    reason = "load_timeout"


class InferenceFailed(ServingError):
    """The runtime failed on a request that passed validation (a model or server fault)."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_status = "INTERNAL"
    reason = "runtime_error"


class ClientDisconnected(ServingError):
    """The client went away while its request waited or ran (nobody reads the answer)."""

    status = HTTPStatus.BAD_REQUEST
    grpc_status = "CANCELLED"
    reason = "client_disconnected"
