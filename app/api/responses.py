"""Raw-bytes responses encoded with orjson (numpy arrays serialised natively)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"


class BytesResponse(Response):
    """A response of ready bytes: its headers are set directly, without the rendering and
    header inference of ``Response.__init__`` (the inference routes answer with these)."""

    def __init__(
        self,
        body: bytes,
        media_type: str = JSON,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = body
        self.raw_headers = [
            (_CONTENT_TYPE, media_type.encode("latin-1")),
            (_CONTENT_LENGTH, str(len(body)).encode("latin-1")),
        ]
        if headers:
            for name, value in headers.items():
                self.raw_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response; numpy arrays inside ``content`` are written without a Python copy."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    return BytesResponse(body, JSON, status_code, headers)


def error_response(
    message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"error": message}, status_code, headers)
