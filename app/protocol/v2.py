"""Open Inference Protocol v2 inference requests and responses, JSON and binary."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.errors import BadRequest
from app.protocol import binary
from app.protocol.containers import check_containers
from app.protocol.datatypes import numpy_dtype, v2_datatype
from app.protocol.limits import DEFAULT_MAX_RESPONSE_BYTES, RequestLimits
from app.protocol.response_size import check_response_size
from app.protocol.tensors import decode_json_tensor, json_data, parse_shape
from app.protocol.timeouts import timeout_parameter

JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request, whatever protocol carried it: named arrays plus what the
    client wants back."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    #: The outputs asked for (None: all), and whether each comes back as binary (REST).
    outputs: list[RequestedOutput] | None = None
    binary_outputs: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    #: The request's own queue timeout (its ``timeout`` parameter), in microseconds.
    timeout_us: int | None = None
    #: The client sent one example without its batch dimension; outputs drop it again.
    unbatched: bool = False
    #: Outputs asked for as their k best classes (Triton's ``classification`` parameter).
    classification: dict[str, int] | None = None

    def output_names(self) -> list[str] | None:
        """The names of the outputs asked for, or None for all of them."""
        if self.outputs is None:
            return None
        return [output.name for output in self.outputs]


def loads_object(raw: bytes | memoryview, what: str = "request body") -> dict[str, Any]:
    """Parse JSON that must be an object, as a 400 on any failure."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: parameters must be an object")
    return value


def _flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    """A boolean parameter: JSON true or false (the string "false" is not false)."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: {key} must be true or false, got {value!r:.40}")
    return value


def parse_infer_request(
    body: bytes, header_length: int | None, limits: RequestLimits
) -> InferRequest:
    """Decode a v2 infer body (JSON, or JSON header plus binary tensors)."""
    header, rest = binary.split_body(body, header_length)
    if len(header) > 2 * limits.max_json_containers:
        check_containers(header, limits.max_json_containers)
    doc = loads_object(header, "inference request")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("id must be a string")
    params = _parameters(doc.get("parameters"), "request")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise BadRequest("inputs must be a non-empty list of tensors")
    if len(inputs_doc) > limits.max_inputs:
        raise BadRequest(f"{len(inputs_doc)} inputs is over the limit of {limits.max_inputs}")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    total = 0
    for item in inputs_doc:
        if not isinstance(item, dict):
            raise BadRequest("each input must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("each input needs a string 'name'")
        if name in inputs:
            raise BadRequest(f"input '{name}' appears twice")
        datatype = item.get("datatype")
        dtype = numpy_dtype(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise BadRequest(f"input '{name}': unknown datatype {datatype!r}")
        shape = parse_shape(item.get("shape"), name, limits.max_elements)
        total += math.prod(shape)
        if total > limits.max_elements:
            raise BadRequest(f"request has more than {limits.max_elements} tensor elements")
        size = _parameters(item.get("parameters"), f"input '{name}'").get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative int")
            if offset + size > len(rest):
                raise BadRequest(
                    f"input '{name}': binary_data_size {size} runs past the end of the body"
                )
            chunk = rest[offset : offset + size]
            offset += size
            inputs[name] = binary.decode_tensor(chunk, dtype, shape, limits.max_bytes_element)
        elif "data" in item:
            inputs[name] = decode_json_tensor(
                item["data"], dtype, shape, name, limits.max_depth, limits.max_bytes_element
            )
        else:
            raise BadRequest(f"input '{name}' has neither data nor binary_data_size")
    if offset != len(rest):
        raise BadRequest(f"{len(rest) - offset} bytes of binary data belong to no input")

    binary_default = params.get("binary_data_output", False)
    if binary_default is not False and binary_default is not True:
        _flag(params, "binary_data_output", False, "parameters")  # the error naming it
    outputs: list[RequestedOutput] | None = None
    classes: dict[str, int] = {}
    outputs_doc = doc.get("outputs")
    if outputs_doc is not None:
        if not isinstance(outputs_doc, list):
            raise BadRequest("outputs must be a list")
        outputs = []
        seen: set[str] = set()
        for item in outputs_doc:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadRequest("each requested output needs a string 'name'")
            name = item["name"]
            if name in seen:
                # Each copy would be encoded again: a short request, a huge response.
                raise BadRequest(f"output '{name:.64}' is requested more than once")
            seen.add(name)
            where = f"output '{name:.64}' parameters"
            out_params = _parameters(item.get("parameters"), f"output '{name:.64}'")
            outputs.append(
                RequestedOutput(name, _flag(out_params, "binary_data", binary_default, where))
            )
            count = out_params.get("classification")
            if count is not None:
                classes[item["name"]] = class_count(count, item["name"])
    timeout_us = timeout_parameter(params.get("timeout"))
    return InferRequest(
        inputs, request_id, outputs, binary_default, params, timeout_us, False, classes or None
    )


def class_count(value: object, name: str) -> int:
    """The ``classification`` parameter of a requested output: how many classes (0: none)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"output '{name}': classification must be a non-negative integer")
    return value


def encode_infer_response(
    model: str,
    version: str,
    results: dict[str, np.ndarray],
    request: InferRequest,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> tuple[bytes, int | None]:
    """Encode results as a v2 response; returns the body and the JSON header length when
    any output is binary (``None`` for a plain JSON body). A response that would pass
    ``max_bytes`` is refused before anything is encoded."""
    wanted: Iterable[tuple[str, bool]]
    if request.outputs is None:
        binary_default = request.binary_outputs
        wanted = ((name, binary_default) for name in results)
    else:
        wanted = ((out.name, out.binary) for out in request.outputs)
    outputs: list[dict[str, Any]] = []
    binary_outputs: list[tuple[dict[str, Any], np.ndarray]] = []
    # The outputs' own bytes; their JSON text takes at most 8 times as many (text aside),
    # so only a response that may be near the limit is measured precisely.
    raw = 0
    for name, as_binary in wanted:
        array = results[name]
        raw += array.nbytes
        if array.dtype.hasobject:
            raw += max_bytes
        entry: dict[str, Any] = {
            "name": name,
            "datatype": v2_datatype(array.dtype) or array.dtype.name,
            "shape": list(array.shape),
        }
        if as_binary:
            binary_outputs.append((entry, array))
        else:
            entry["data"] = json_data(array)
        outputs.append(entry)
    if raw * 8 > max_bytes:
        binary_names = {entry["name"] for entry, _ in binary_outputs}
        check_response_size(
            [(results[e["name"]], e["name"] in binary_names) for e in outputs], max_bytes
        )
    blobs: list[bytes] = []
    if binary_outputs:
        for entry, array in binary_outputs:
            blob = binary.encode_tensor(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=JSON_OPTIONS)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
