"""The one mapping of a failed session run to the error its client gets."""

from __future__ import annotations

from app.errors import BadRequest, ClientDisconnected, InferenceFailed, ServingError, hide_paths
from app.registry.session_pool import RunAbandoned

# onnxruntime's error classes for bad inputs (as opposed to faults of the model or runtime).
_ORT_CLIENT_ERRORS = {"InvalidArgument", "InvalidGraph", "NotImplemented"}
# Failures of the machine rather than of the values a run was given.
_RESOURCE_FAILURES = ("alloc", "memory", "cuda", "cudnn", "cublas", "tensorrt", "device")


def runtime_error(exc: BaseException, warmed: bool = False) -> ServingError:
    """Classify an exception of a session run as the client's mistake or a server fault.

    ``warmed``: the model ran on its warm-up inputs at load, so a run that fails on a
    request's values (a Reshape its values make impossible, say) failed because of those
    values: a 400, unless the failure is the machine's (memory, device).
    """
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, RunAbandoned):
        return ClientDisconnected(str(exc))
    message = hide_paths(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if type(exc).__name__ in _ORT_CLIENT_ERRORS:
        return BadRequest(f"onnxruntime rejected the input: {message}")
    lowered = message.lower()
    if warmed and not any(word in lowered for word in _RESOURCE_FAILURES):
        return BadRequest(f"the model cannot run on these input values: {message}")
    return InferenceFailed(f"inference failed: {message}")
