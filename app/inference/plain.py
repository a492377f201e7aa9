"""Plain JSON tensors (/predict and KServe v1): nesting gives the shape, the model the dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import BadRequest
from app.protocol.limits import RequestLimits
from app.protocol.tensors import decode_json_tensor, jsonable
from app.registry.model import ModelVersion, TensorSpec

Tensors = dict[str, np.ndarray]


def _decode(spec: TensorSpec, value: Any, limits: RequestLimits) -> np.ndarray:
    array = decode_json_tensor(
        value, spec.dtype, None, spec.name, limits.max_depth, limits.max_bytes_element
    )
    if array.size > limits.max_elements:
        raise BadRequest(f"input '{spec.name}' is over the limit of {limits.max_elements} elements")
    return array


def named_inputs(model: ModelVersion, inputs: Any, limits: RequestLimits) -> tuple[Tensors, bool]:
    """Arrays for ``{name: nested list}`` (or a bare nested list for a one-input model).

    Returns the arrays and whether a batch dimension was added because the client sent one
    example without it (the outputs then lose it again).
    """
    if isinstance(inputs, list | np.ndarray):
        if len(model.inputs) != 1:
            names = ", ".join(s.name for s in model.inputs)
            raise BadRequest(f"model '{model.name}' has several inputs ({names}): name them")
        inputs = {model.inputs[0].name: inputs}
    if not isinstance(inputs, dict) or not inputs:
        raise BadRequest("inputs must be an object of named tensors or a nested list")
    if len(inputs) > limits.max_inputs:
        raise BadRequest(f"{len(inputs)} inputs is over the limit of {limits.max_inputs}")
    arrays: Tensors = {}
    for name, value in inputs.items():
        spec = model.input(name)
        if spec is None:
            expected = ", ".join(s.name for s in model.inputs)
            raise BadRequest(f"model '{model.name}' has no input '{name}' (inputs: {expected})")
        arrays[name] = _decode(spec, value, limits)
    _check_total(arrays, limits)
    unbatched = model.batched and all(
        arrays[s.name].ndim == len(s.shape) - 1 for s in model.inputs if s.name in arrays
    )
    if unbatched:
        arrays = {name: a[np.newaxis, ...] for name, a in arrays.items()}
    return arrays, unbatched


def instances_inputs(model: ModelVersion, instances: Any, limits: RequestLimits) -> Tensors:
    """Stack KServe v1 ``instances`` (one per row) into batched arrays."""
    if isinstance(instances, np.ndarray) and instances.ndim and len(instances):
        # Rows made into one array off the event loop (app/protocol/json_bodies.py).
        if len(model.inputs) != 1:
            raise BadRequest("instances of a multi-input model must be objects of named inputs")
        spec = model.inputs[0]
        if not model.batched and len(instances) != 1:
            raise BadRequest(f"model '{model.name}' has no batch dimension: send one instance")
        return {spec.name: _decode(spec, instances if model.batched else instances[0], limits)}
    if not isinstance(instances, list) or not instances:
        raise BadRequest("instances must be a non-empty list")
    if len(model.inputs) == 1 and not all(isinstance(i, dict) for i in instances):
        spec = model.inputs[0]
        rows = instances if model.batched else instances[0] if len(instances) == 1 else None
        if rows is None:
            raise BadRequest(f"model '{model.name}' has no batch dimension: send one instance")
        return {spec.name: _decode(spec, rows, limits)}
    if not all(isinstance(i, dict) for i in instances):
        raise BadRequest("instances of a multi-input model must be objects of named inputs")
    if not model.batched and len(instances) != 1:
        raise BadRequest(f"model '{model.name}' has no batch dimension: send one instance")
    columns: dict[str, list[Any]] = {}
    for instance in instances:
        for name, value in instance.items():
            columns.setdefault(name, []).append(value)
    arrays: Tensors = {}
    for name, column in columns.items():
        found = model.input(name)
        if found is None:
            raise BadRequest(f"model '{model.name}' has no input '{name}'")
        if len(column) != len(instances):
            raise BadRequest(f"input '{name}' is missing from some instances")
        arrays[name] = _decode(found, column if model.batched else column[0], limits)
    _check_total(arrays, limits)
    return arrays


def _check_total(arrays: Tensors, limits: RequestLimits) -> None:
    total = sum(a.size for a in arrays.values())
    if total > limits.max_elements:
        raise BadRequest(
            f"request has {total} tensor elements, over the limit of {limits.max_elements}"
        )


def predictions(model: ModelVersion, results: Tensors) -> list[Any]:
    """KServe v1 ``predictions``: one entry per row, a dict when there are several outputs."""
    if not model.batched:
        if len(results) == 1:
            return [jsonable(next(iter(results.values())))]
        return [{name: jsonable(a) for name, a in results.items()}]
    if len(results) == 1:
        return [jsonable(row) for row in next(iter(results.values()))]
    rows = len(next(iter(results.values())))
    return [{name: jsonable(array[i]) for name, array in results.items()} for i in range(rows)]
