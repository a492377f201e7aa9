"""JSON tensor codec: v2 ``data`` lists (flat or nested, row-major) to and from numpy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.errors import BadRequest

# numpy arrays have at most 32 dimensions in numpy 1 (64 in numpy 2).
MAX_DIMS = 32
_INT_KINDS = ("i", "u")
_ACCEPTED_KINDS: dict[str, tuple[str, ...]] = {
    "b": ("b",),
    "i": _INT_KINDS,
    "u": _INT_KINDS,
    "f": ("f", "i", "u"),
}


def parse_shape(value: Any, name: str, max_elements: int) -> tuple[int, ...]:
    """Validate a v2 ``shape`` field: a list of non-negative integers within the limit."""
    # One pass over the dimensions (this runs for every input of every request); the checks
    # are then reported in a fixed order.
    integers = isinstance(value, list)
    negative = False
    largest = 0
    if integers:
        for d in value:
            if not isinstance(d, int) or isinstance(d, bool):
                integers = False
                break
            if d < 0:
                negative = True
            elif d > largest:
                largest = d
    if not integers:
        raise BadRequest(f"input '{name}': shape must be a list of integers, got {value!r:.80}")
    if len(value) > MAX_DIMS:
        raise BadRequest(f"input '{name}': shape has {len(value)} dimensions, over {MAX_DIMS}")
    if negative:
        raise BadRequest(f"input '{name}': shape {value} has a negative dimension")
    count = math.prod(value)
    if count > max_elements:
        raise BadRequest(
            f"input '{name}': shape {value} has {count} elements, over the limit {max_elements}"
        )
    # Each dimension on its own too: with a 0 elsewhere a huge one passes the product check
    # and then overflows numpy's sizes.
    if largest > max_elements:
        raise BadRequest(
            f"input '{name}': shape {value} has a dimension over the limit of {max_elements}"
        )
    return tuple(value)


def _depth(data: Any, limit: int) -> int:
    depth = 0
    while isinstance(data, list):
        depth += 1
        if depth > limit:
            break
        if not data:
            break
        data = data[0]
    return depth


def decode_json_tensor(
    data: Any,
    dtype: np.dtype[np.generic],
    shape: tuple[int, ...] | None,
    name: str,
    max_depth: int = 64,
    max_element: int = 16 * 1024 * 1024,
) -> np.ndarray:
    """Build an array of ``dtype`` from JSON ``data``, checking every rule.

    With ``shape`` the data may be flat or nested (v2); without, the nesting is the shape.
    """
    if isinstance(data, np.ndarray):
        # Made from the nested lists off the event loop (app/protocol/json_bodies.py).
        if data.ndim > max_depth:
            raise BadRequest(f"input '{name}': data is nested deeper than {max_depth} levels")
        raw = data if dtype.kind != "O" or data.dtype.kind == "O" else data.astype(np.object_)
    else:
        if shape is not None and not isinstance(data, list):
            data = [data]
        if _depth(data, max_depth) > max_depth:
            raise BadRequest(f"input '{name}': data is nested deeper than {max_depth} levels")
        try:
            raw = np.array(data, dtype=np.object_ if dtype.kind == "O" else None)
        except (ValueError, TypeError) as exc:
            raise BadRequest(f"input '{name}': data is not a regular array: {exc}") from None
    if shape is None:
        shape = raw.shape
    if dtype.kind == "O":
        return _decode_bytes(data, shape, name, max_element)
    if dtype == np.uint64 and raw.dtype.kind in ("f", "O"):
        # Values past INT64_MAX make numpy guess float64 or object: keep them exact.
        raw = _exact_uint64(data, name)
    # An empty list parses as float64 whatever the tensor's type: nothing to check then.
    if raw.size and raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        got = "strings" if raw.dtype.kind in ("U", "S") else f"values of kind {raw.dtype.name}"
        if raw.dtype.kind == "O":
            got = "mixed or ragged values"
        raise BadRequest(f"input '{name}': expected {dtype.name} data, got {got}")
    if raw.size and dtype.kind in _INT_KINDS:
        info = np.iinfo(dtype)  # type: ignore[type-var]
        if raw.min() < info.min or raw.max() > info.max:
            raise BadRequest(f"input '{name}': values out of range for {dtype.name}")
    expected = math.prod(shape)
    if raw.size != expected:
        raise BadRequest(
            f"input '{name}': data has {raw.size} elements but shape {list(shape)} needs {expected}"
        )
    try:
        with np.errstate(over="raise"):
            return raw.astype(dtype, copy=False).reshape(shape)
    except FloatingPointError:
        raise BadRequest(f"input '{name}': values out of range for {dtype.name}") from None


def _exact_uint64(data: Any, name: str) -> np.ndarray:
    try:
        values = np.array(data, dtype=np.object_)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"input '{name}': data is not a regular array: {exc}") from None
    flat = values.ravel()
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
        raise BadRequest(f"input '{name}': expected uint64 data, got non-integers")
    if any(v < 0 or v > 0xFFFF_FFFF_FFFF_FFFF for v in flat):
        raise BadRequest(f"input '{name}': values out of range for uint64")
    return values.astype(np.uint64)


def _decode_bytes(data: Any, shape: tuple[int, ...], name: str, max_element: int) -> np.ndarray:
    flat: list[Any] = []
    stack: list[Any] = [data.ravel().tolist() if isinstance(data, np.ndarray) else data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            if len(item) > max_element // 4 and len(item.encode("utf-8")) > max_element:
                raise BadRequest(f"input '{name}': a BYTES element is over {max_element} bytes")
            flat.append(item)
        else:
            raise BadRequest(f"input '{name}': BYTES data must be strings, got {item!r:.40}")
    expected = math.prod(shape)
    if len(flat) != expected:
        raise BadRequest(
            f"input '{name}': data has {len(flat)} elements but shape {list(shape)} needs "
            f"{expected}"
        )
    out = np.empty(len(flat), dtype=np.object_)
    out[:] = flat
    return out.reshape(shape)


def json_data(array: np.ndarray) -> Any:
    """The flat row-major ``data`` of an output, as orjson serialises it (numpy kept)."""
    if array.dtype.kind in ("O", "U", "S"):
        return [_text(item) for item in array.ravel()]
    if array.dtype == np.float16:
        # orjson does not serialise float16; widen without changing any value.
        return array.astype(np.float32).ravel()
    return array.ravel()  # a row-major view (a copy only when the array is not contiguous)


def _text(item: Any) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    return str(item)


def jsonable(array: np.ndarray) -> Any:
    """A shaped array as orjson can write it: numeric arrays as they are, text as lists."""
    if array.dtype.kind in ("O", "U", "S"):
        flat = [_text(item) for item in array.ravel()]
        return np.array(flat, dtype=np.object_).reshape(array.shape).tolist()
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return np.ascontiguousarray(array)
