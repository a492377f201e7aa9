"""The protocol's gRPC messages to and from what the data plane takes and gives.

Messages are the generated modules that ``tritonclient[grpc]`` ships (``inference`` package,
``GRPCInferenceService``): the same wire format as Triton's and KServe's v2 gRPC.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from app.errors import BadRequest
from app.protocol import binary
from app.protocol.datatypes import numpy_dtype, v2_datatype
from app.protocol.limits import DEFAULT_MAX_RESPONSE_BYTES, RequestLimits
from app.protocol.response_size import check_response_size
from app.protocol.tensors import parse_shape
from app.protocol.timeouts import timeout_parameter
from app.protocol.v2 import InferRequest, RequestedOutput, class_count
from app.registry.model import Feeds

#: The typed ``contents`` field of each datatype, and the dtype that field holds (FP16 has no
#: typed field: it travels as raw bytes only).
CONTENTS_FIELDS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}


def parameter_value(parameter: Any) -> object:
    """The Python value of an ``InferParameter`` or ``ModelRepositoryParameter``."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def _typed_contents(
    tensor: service_pb2.ModelInferRequest.InferInputTensor,
    datatype: str,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    limits: RequestLimits,
) -> np.ndarray:
    name = tensor.name
    found = CONTENTS_FIELDS.get(datatype)
    if found is None:
        raise BadRequest(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    field, wide = found
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"input '{name}': {field} has {len(values)} elements, shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        for i, item in enumerate(values):
            if len(item) > limits.max_bytes_element:
                raise BadRequest(f"input '{name}': BYTES element {i} is over the size limit")
            try:
                out[i] = item.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"input '{name}': BYTES element {i} is not UTF-8 text") from None
        return out.reshape(shape)
    array = np.array(values, dtype=wide)
    if dtype != wide and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise BadRequest(f"input '{name}': a value is out of the range of {datatype}")
    return array.astype(dtype, copy=False).reshape(shape)


def decode_infer_request(
    message: service_pb2.ModelInferRequest, limits: RequestLimits
) -> InferRequest:
    """A ``ModelInferRequest`` as the data plane's request: tensors from raw_input_contents
    (all inputs) or the typed contents, requested outputs, parameters and timeout."""
    tensors = message.inputs
    if not tensors:
        raise BadRequest("inputs must be a non-empty list of tensors")
    if len(tensors) > limits.max_inputs:
        raise BadRequest(f"{len(tensors)} inputs is over the limit of {limits.max_inputs}")
    raw = message.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(tensors)} inputs: send every "
            "input's data raw, or none"
        )
    inputs: Feeds = {}
    total = 0
    for i, tensor in enumerate(tensors):
        name = tensor.name
        if not name:
            raise BadRequest("each input needs a name")
        if name in inputs:
            raise BadRequest(f"input '{name}' appears twice")
        dtype = numpy_dtype(tensor.datatype)
        if dtype is None:
            raise BadRequest(f"input '{name}': unknown datatype {tensor.datatype!r}")
        shape = parse_shape(list(tensor.shape), name, limits.max_elements)
        total += math.prod(shape)
        if total > limits.max_elements:
            raise BadRequest(f"request has more than {limits.max_elements} tensor elements")
        if raw:
            inputs[name] = binary.decode_tensor(
                memoryview(raw[i]), dtype, shape, limits.max_bytes_element
            )
        else:
            inputs[name] = _typed_contents(tensor, tensor.datatype, dtype, shape, limits)
    outputs = [RequestedOutput(o.name, True) for o in message.outputs] or None
    if outputs is not None and len({o.name for o in outputs}) != len(outputs):
        # Each copy would be encoded again: a short request, a huge response.
        raise BadRequest("an output is requested more than once")
    classes: dict[str, int] = {}
    for output in message.outputs:
        if "classification" in output.parameters:
            count = parameter_value(output.parameters["classification"])
            classes[output.name] = class_count(count, output.name)
    parameters = {key: parameter_value(value) for key, value in message.parameters.items()}
    timeout_us = timeout_parameter(parameters.get("timeout"))
    return InferRequest(
        inputs,
        id=message.id or None,
        outputs=outputs,
        binary_outputs=True,
        parameters=parameters,
        timeout_us=timeout_us,
        classification=classes or None,
    )


def encode_infer_response(
    model: str,
    version: str,
    outputs: Feeds,
    request: InferRequest,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> service_pb2.ModelInferResponse:
    """The outputs as a ``ModelInferResponse`` with raw_output_contents, in the requested
    order (else the model's); refused when they would pass ``max_bytes``."""
    names = request.output_names() or list(outputs)
    check_response_size([(outputs[name], True) for name in names], max_bytes)
    response = service_pb2.ModelInferResponse(
        model_name=model, model_version=version, id=request.id or ""
    )
    tensors = response.outputs
    contents = response.raw_output_contents
    for name in names:
        array = outputs[name]
        tensors.add(
            name=name,
            datatype=v2_datatype(array.dtype) or array.dtype.name,
            shape=array.shape,
        )
        contents.append(binary.encode_tensor(array))
    return response


def model_metadata(doc: dict[str, Any]) -> service_pb2.ModelMetadataResponse:
    """The v2 metadata document's protocol fields as a ``ModelMetadataResponse``."""

    def tensors(
        specs: list[dict[str, Any]],
    ) -> list[service_pb2.ModelMetadataResponse.TensorMetadata]:
        return [
            service_pb2.ModelMetadataResponse.TensorMetadata(
                name=s["name"], datatype=s["datatype"], shape=s["shape"]
            )
            for s in specs
        ]

    return service_pb2.ModelMetadataResponse(
        name=doc["name"],
        versions=doc["versions"],
        platform=doc["platform"],
        inputs=tensors(doc["inputs"]),
        outputs=tensors(doc["outputs"]),
    )


def model_config(doc: dict[str, Any]) -> service_pb2.ModelConfigResponse:
    """Triton's config document as a ``ModelConfig`` (this server's own keys left out)."""
    config = json_format.ParseDict(doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    return service_pb2.ModelConfigResponse(config=config)


def model_statistics(entries: list[dict[str, Any]]) -> service_pb2.ModelStatisticsResponse:
    response = service_pb2.ModelStatisticsResponse()
    return json_format.ParseDict({"model_stats": entries}, response)


def repository_index(entries: list[dict[str, Any]]) -> service_pb2.RepositoryIndexResponse:
    """The index's entries (the message has no field for their memory)."""
    index = service_pb2.RepositoryIndexResponse.ModelIndex
    return service_pb2.RepositoryIndexResponse(
        models=[
            index(name=e["name"], version=e["version"], state=e["state"], reason=e["reason"])
            for e in entries
        ]
    )
