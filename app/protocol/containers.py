"""The containers a JSON body may hold, counted before it is parsed.

Each JSON array or object becomes a Python object of about 100 bytes when the body is
parsed; counting ``[`` and ``{`` bytes (an upper bound: some may sit in strings) takes a
pass at memory speed and bounds what the parse will build.
"""

from __future__ import annotations

from app.errors import BadRequest


def check_containers(body: bytes | memoryview, limit: int) -> None:
    """Refuse a body that could hold more than ``limit`` JSON arrays and objects."""
    if len(body) <= 2 * limit:
        return  # every container takes at least two bytes: nothing to count
    data = bytes(body) if isinstance(body, memoryview) else body
    found = data.count(b"[") + data.count(b"{")
    if found > limit:
        raise BadRequest(
            f"the JSON body has up to {found} arrays and objects, over the limit of {limit} "
            "(max_json_containers): send tensor data flat, or binary"
        )
