"""Checks of a request against its model: input names, dtypes and shapes, and outputs."""

from __future__ import annotations

from app.errors import BadRequest
from app.registry.model import Feeds, ModelVersion, TensorSpec


def validate_inputs(model: ModelVersion, inputs: Feeds) -> int:
    """Check names, dtypes and shapes against the model; return the batch size (rows)."""
    specs = model.inputs
    if len(inputs) != len(specs):
        _check_names(model, inputs)
    batched = model.max_batch_size > 0
    rows: int | None = None
    for spec in specs:
        array = inputs.get(spec.name)
        if array is None:
            _check_names(model, inputs)
            raise BadRequest(f"input '{spec.name}' is missing")
        if array.dtype != spec.dtype:
            got = "BYTES" if array.dtype.kind in "OUS" else str(array.dtype)
            raise BadRequest(f"input '{spec.name}' must be {spec.datatype}, got {got}")
        shape = array.shape
        if len(shape) != len(spec.shape):
            raise _shape_error(spec, shape)
        for want, got in zip(spec.shape, shape, strict=True):
            if want != got and want != -1:
                raise _shape_error(spec, shape)
        if batched:
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise BadRequest("all inputs must have the same batch size (first dimension)")
    if rows is None:
        return 1
    if rows > model.max_batch_size:
        raise BadRequest(
            f"batch of {rows} is over the model's max_batch_size {model.max_batch_size}"
        )
    return rows


def _check_names(model: ModelVersion, inputs: Feeds) -> None:
    for name in inputs:
        if model.input(name) is None:
            expected = ", ".join(s.name for s in model.inputs)
            raise BadRequest(f"model '{model.name}' has no input '{name}' (inputs: {expected})")


def _shape_error(spec: TensorSpec, shape: tuple[int, ...]) -> BadRequest:
    return BadRequest(
        f"input '{spec.name}' has shape {list(shape)}, the model expects "
        f"{list(spec.shape)} (-1 is any size)"
    )


def output_names(model: ModelVersion, requested: list[str] | None) -> list[str]:
    """The outputs to compute: those requested (checked) or all of them."""
    if requested is None:
        return model.output_names()
    known = set(model.output_names())
    for name in requested:
        if name not in known:
            raise BadRequest(
                f"model '{model.name}' has no output '{name}' "
                f"(outputs: {', '.join(model.output_names())})"
            )
    return list(dict.fromkeys(requested))
