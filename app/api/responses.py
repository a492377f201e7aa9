"""Raw-bytes responses encoded with orjson (numpy arrays serialised natively)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response; numpy arrays inside ``content`` are written without a Python copy."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type=JSON,
        headers=headers,
    )


def error_response(
    message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"error": message}, status_code, headers)
