"""Integers sent as text (headers, query strings, form fields), parsed with bounds.

Python's ``int()`` takes ``1_0``, surrounding spaces, a sign and non-ASCII digits, and
refuses values past 4,300 digits with a ``ValueError`` that names no field; every number a
client sends as text goes through here instead: ASCII digits only, at most 18 of them (any
value fits an int64), within the field's bounds, else a 400 that names the field.
"""

from __future__ import annotations

import re

from app.errors import BadRequest

_DIGITS = re.compile(r"[0-9]{1,18}")


def parse_int(text: str, what: str, low: int = 0, high: int = 10**18 - 1) -> int:
    """``text`` as an integer in [low, high]; a 400 naming ``what`` otherwise."""
    if _DIGITS.fullmatch(text) is None or not low <= (value := int(text)) <= high:
        raise BadRequest(f"{what} must be an integer from {low} to {high}, got {text!r:.40}")
    return value
