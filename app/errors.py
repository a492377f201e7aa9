"""Domain errors that carry the HTTP status they map to; no web framework import."""

from __future__ import annotations

from http import HTTPStatus


class ServingError(Exception):
    """Base of every error the service reports to a client as ``{"error": message}``."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST
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
    reason = "unauthorized"


class Forbidden(ServingError):
    status = HTTPStatus.FORBIDDEN
    reason = "forbidden"


class ModelNotFound(ServingError):
    status = HTTPStatus.NOT_FOUND
    reason = "not_found"


class Conflict(ServingError):
    status = HTTPStatus.CONFLICT
    reason = "conflict"


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    reason = "too_large"


class UnsupportedMediaType(ServingError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    reason = "unsupported_media_type"


class InvalidModel(ServingError):
    status = HTTPStatus.UNPROCESSABLE_ENTITY
    reason = "invalid_model"


class InsufficientStorage(ServingError):
    """The model repository has no room (or no write access) for an upload."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    reason = "insufficient_storage"


class QueueFull(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    reason = "queue_full"


class ModelNotReady(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    reason = "not_ready"


class ShuttingDown(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE
    reason = "shutting_down"


class QueueTimeout(ServingError):
    status = HTTPStatus.GATEWAY_TIMEOUT
    reason = "timeout"


class InferenceFailed(ServingError):
    """The runtime failed on a request that passed validation (a model or server fault)."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    reason = "runtime_error"
