"""The size a response would have, bounded before it is encoded.

A response is at most the outputs it carries: binary outputs take their bytes, JSON ones
take at most the longest text of each element (``-1.1754944e-38,`` for float32). Encoders
call ``check_response_size`` before building anything, so an output too large to send is a
clear error instead of gigabytes of text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.errors import ResponseTooLarge

#: Longest JSON text of one element (with its comma), by numpy dtype character.
_JSON_ELEMENT_BYTES = {
    "?": 6,  # false,
    "b": 5,
    "B": 4,
    "h": 7,
    "H": 6,
    "i": 12,
    "I": 11,
    "l": 21,
    "L": 21,
    "q": 21,
    "Q": 21,
    "e": 16,  # written as float32
    "f": 16,
    "d": 25,
}
#: The most any element's JSON can take per byte of its binary form (bool and float16).
_MAX_EXPANSION = 8
#: A text element's JSON: each byte may be escaped (``\\u00XX``), plus quotes and comma.
_TEXT_EXPANSION = 6
_TEXT_OVERHEAD = 3


def _json_bytes(array: np.ndarray) -> int:
    if array.dtype.kind in ("O", "U", "S"):
        total = 0
        for item in array.ravel():
            size = len(item) if isinstance(item, bytes | str) else len(str(item))
            # A str of n characters is at most 4n bytes of UTF-8.
            size *= 4 if isinstance(item, str) else 1
            total += size * _TEXT_EXPANSION + _TEXT_OVERHEAD
        return total
    return array.size * _JSON_ELEMENT_BYTES.get(array.dtype.char, 25)


def check_response_size(outputs: Sequence[tuple[np.ndarray, bool]], limit: int) -> None:
    """Refuse outputs whose response would pass ``limit`` bytes (each: array, is binary)."""
    raw = 0
    for array, _ in outputs:
        if array.dtype.hasobject:
            break
        raw += array.nbytes
    else:
        if raw * _MAX_EXPANSION <= limit:
            return  # the common case: nothing can be near the limit
    total = 0
    for array, binary in outputs:
        if binary and not array.dtype.hasobject:
            total += array.nbytes
        elif binary:
            total += sum(len(str(v).encode()) + 4 for v in array.ravel())
        else:
            total += _json_bytes(array)
    if total > limit:
        raise ResponseTooLarge(
            f"the response would take about {total} bytes, over the limit of {limit} "
            "(max_response_bytes): ask for fewer or smaller outputs, or binary ones"
        )
