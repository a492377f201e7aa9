"""Large JSON request bodies: a structure check before parsing, and decoding for a worker.

A JSON body becomes Python objects when it is parsed: about 100 bytes for each array or
object and up to 32 for each number, whatever the body's size. So before a large body is
parsed its arrays and objects are counted (``[`` and ``{`` bytes, an upper bound, at memory
speed) against ``max_json_containers``; and bodies over ``OFFLOAD_BYTES`` are decoded in a
worker process (``python -m app.protocol.json_worker``, see app/api/json_offload.py), where
neither the parse nor the conversion to arrays holds the server's interpreter lock. The
functions here are what that worker runs: each returns what the request's route needs,
with every tensor already an array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import BadRequest
from app.protocol.containers import check_containers
from app.protocol.limits import RequestLimits
from app.protocol.v2 import InferRequest, loads_object, parse_infer_request

#: JSON bodies (or v2 JSON headers) larger than this are decoded in a worker process.
OFFLOAD_BYTES = 256 * 1024


def v2_request(body: bytes, header_length: int | None, limits: RequestLimits) -> InferRequest:
    """A v2 infer request, decoded whole (JSON, or JSON header plus binary tensors)."""
    return parse_infer_request(body, header_length, limits)


def _array(value: Any, where: str) -> Any:
    """``value`` as ``np.array`` makes it (what the tensor decoder does first), or as it is
    when it is not a list (the decoder then reports what is wrong with it)."""
    if not isinstance(value, list):
        return value
    try:
        array = np.array(value)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{where}: data is not a regular array: {exc}") from None
    if array.dtype.kind in ("U", "S"):
        array = np.array(value, dtype=np.object_)
    return array


def plain_document(body: bytes, limits: RequestLimits) -> dict[str, Any]:
    """A ``/predict`` or KServe v1 body with its tensors (``inputs``, ``instances``) as arrays."""
    check_containers(body, limits.max_json_containers)
    doc = loads_object(body)
    inputs = doc.get("inputs")
    if isinstance(inputs, dict):
        doc["inputs"] = {name: _array(value, f"input '{name}'") for name, value in inputs.items()}
    elif isinstance(inputs, list):
        doc["inputs"] = _array(inputs, "inputs")
    instances = doc.get("instances")
    if isinstance(instances, list) and instances:
        if all(isinstance(item, dict) for item in instances):
            doc["instances"] = [
                {name: _array(value, f"input '{name}'") for name, value in item.items()}
                for item in instances
            ]
        else:
            doc["instances"] = _array(instances, "instances")
    return doc
