"""What a call presents in its metadata: request id and API key."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from app.grpc.calls import presented


class Item(NamedTuple):
    """One metadata entry as grpc.aio hands it to a servicer (``key``, ``value``)."""

    key: str
    value: str | bytes


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), (None, None)),
        (None, (None, None)),
        ([Item("x-request-id", "abc-1")], (b"abc-1", None)),
        ([Item("x-request-id", b"raw")], (b"raw", None)),
        ([Item("x-request-id", "first"), Item("x-request-id", "second")], (b"first", None)),
        ([Item("authorization", "Bearer  k1 ")], (None, "k1")),
        ([Item("authorization", "bearer k1")], (None, "k1")),
        ([Item("authorization", "Basic dXNlcg==")], (None, None)),
        ([Item("authorization", "Bearer ")], (None, None)),
        ([Item("x-api-key", " k2 ")], (None, "k2")),
        # A bearer token is the key, wherever X-API-Key comes.
        ([Item("x-api-key", "k2"), Item("authorization", "Bearer k1")], (None, "k1")),
        ([Item("authorization", "Bearer k1"), Item("x-api-key", "k2")], (None, "k1")),
        ([Item("user-agent", "grpc-python"), Item("x-request-id", "r")], (b"r", None)),
    ],
)
def test_request_id_and_key_from_metadata(
    metadata: list[Item] | None, expected: tuple[bytes | None, str | None]
) -> None:
    assert presented(metadata) == expected
