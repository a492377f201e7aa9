"""The v2 binary tensor data extension: raw little-endian tensors after a JSON header."""

from __future__ import annotations

import math
import struct

import numpy as np

from app.errors import BadRequest
from app.protocol.numbers import parse_int

_LENGTH = struct.Struct("<I")


_NO_BINARY = memoryview(b"")


def split_body(body: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    """Split a request body into its JSON header and the binary section after it."""
    if header_length is None:
        return body, _NO_BINARY
    if header_length < 0 or header_length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length} is outside the body of "
            f"{len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:header_length]), view[header_length:]


def parse_header_length(value: str | None) -> int | None:
    """Parse the ``Inference-Header-Content-Length`` header, if any."""
    if value is None:
        return None
    return parse_int(value, "Inference-Header-Content-Length")


def decode_bytes_elements(buffer: memoryview, count: int, max_element: int) -> np.ndarray:
    """Decode ``count`` length-prefixed UTF-8 elements that fill ``buffer`` exactly."""
    out = np.empty(count, dtype=np.object_)
    offset = 0
    size = len(buffer)
    for i in range(count):
        if offset + 4 > size:
            raise BadRequest(f"BYTES tensor data ends inside the length of element {i}")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if length > max_element:
            raise BadRequest(f"BYTES element {i} is {length} bytes, over the limit {max_element}")
        if offset + length > size:
            raise BadRequest(f"BYTES element {i} declares {length} bytes past the data's end")
        try:
            # onnxruntime string tensors hold UTF-8 text, so elements become str here.
            out[i] = str(buffer[offset : offset + length], "utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"BYTES element {i} is not UTF-8 text") from None
        offset += length
    if offset != size:
        raise BadRequest(f"BYTES tensor data has {size - offset} bytes after its {count} elements")
    return out


def encode_bytes_elements(array: np.ndarray) -> bytes:
    """Serialise a BYTES tensor as length-prefixed elements in row-major order."""
    parts: list[bytes] = []
    for item in array.ravel():
        data = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_tensor(
    buffer: memoryview,
    dtype: np.dtype[np.generic],
    shape: tuple[int, ...],
    max_element: int,
) -> np.ndarray:
    """Decode one binary tensor, checking its size against dtype and shape."""
    count = math.prod(shape)
    if dtype.kind == "O":
        return decode_bytes_elements(buffer, count, max_element).reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise BadRequest(
            f"binary data is {len(buffer)} bytes but shape {list(shape)} of "
            f"{dtype.name} needs {expected}"
        )
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).reshape(shape)


def encode_tensor(array: np.ndarray) -> bytes:
    """Raw little-endian bytes of a tensor in row-major order."""
    if array.dtype.kind in ("O", "U", "S"):
        return encode_bytes_elements(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
