"""A request's own queue timeout: the v2 ``timeout`` parameter and the REST header."""

from __future__ import annotations

import re

from app.errors import BadRequest

#: The REST header carrying a request's queue timeout (microseconds; 0: none).
TIMEOUT_HEADER = "X-Request-Timeout-Us"
_TIMEOUT_VALUE = re.compile(rb"[0-9]{1,18}")


def timeout_parameter(value: object) -> int | None:
    """The v2 ``parameters.timeout`` of a request: microseconds, a non-negative integer."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"parameters.timeout must be a non-negative integer (us), got {value!r}")
    return value


def timeout_header(value: bytes | None) -> int | None:
    """The value of ``X-Request-Timeout-Us`` (None when absent); 400 when malformed."""
    if value is None:
        return None
    if _TIMEOUT_VALUE.fullmatch(value.strip()) is None:
        raise BadRequest(f"{TIMEOUT_HEADER} must be a non-negative integer of microseconds")
    return int(value)
