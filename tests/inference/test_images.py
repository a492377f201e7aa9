"""Images sent as base64 text."""

from __future__ import annotations

import base64

import pytest

from app.errors import InvalidImage
from app.inference.images import image_bytes

DATA = bytes(range(256)) * 3


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(DATA).decode(),
        base64.encodebytes(DATA).decode(),  # wrapped at 76 columns, as the base64 tool does
        base64.urlsafe_b64encode(DATA).decode().rstrip("="),
        "data:image/png;base64," + base64.b64encode(DATA).decode(),
    ],
    ids=["plain", "wrapped", "urlsafe-unpadded", "data-url"],
)
def test_base64_forms(text: str) -> None:
    assert image_bytes(text) == DATA


def test_bytes_pass_through() -> None:
    assert image_bytes(DATA) is DATA


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not base64!", r"images\[2\] is not valid base64"),
        ("é", "is not valid base64"),
        ("data:image/png,abc", "a data: URL must be base64-encoded"),
    ],
)
def test_invalid_base64_is_a_400(text: str, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        image_bytes(text, "images[2]")
