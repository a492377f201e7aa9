"""The one mapping of a failed session run to the error its client gets."""

from __future__ import annotations

from app.errors import BadRequest, ClientDisconnected, InferenceFailed, ServingError
from app.registry.session_pool import RunAbandoned

# onnxruntime's error classes for bad inputs (as opposed to faults of the model or runtime).
_ORT_CLIENT_ERRORS = {"InvalidArgument", "InvalidGraph", "NotImplemented"}


def runtime_error(exc: BaseException) -> ServingError:
    """Classify an exception of a session run as the client's mistake or a server fault."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, RunAbandoned):
        return ClientDisconnected(str(exc))
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ in _ORT_CLIENT_ERRORS:
        return BadRequest(f"onnxruntime rejected the input: {message}")
    return InferenceFailed(f"inference failed: {message}")
