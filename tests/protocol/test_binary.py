from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadRequest
from app.protocol import binary


def test_split_body_separates_header_and_tensors() -> None:
    header, rest = binary.split_body(b'{"a":1}\x01\x02', 7)
    assert header == b'{"a":1}'
    assert bytes(rest) == b"\x01\x02"


@pytest.mark.parametrize("length", [-1, 100])
def test_split_body_refuses_lengths_outside_the_body(length: int) -> None:
    with pytest.raises(BadRequest, match="outside the body"):
        binary.split_body(b"{}", length)


@pytest.mark.parametrize("value", ["abc", "-3", "1.5"])
def test_header_length_must_be_a_non_negative_integer(value: str) -> None:
    with pytest.raises(BadRequest):
        binary.parse_header_length(value)


def test_fixed_size_tensor_round_trips_without_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = binary.encode_tensor(array)
    decoded = binary.decode_tensor(memoryview(raw), np.dtype(np.float32), (3, 4), 100)
    np.testing.assert_array_equal(decoded, array)
    assert not decoded.flags.owndata


def test_size_that_disagrees_with_shape_is_refused() -> None:
    with pytest.raises(BadRequest, match="needs 48"):
        binary.decode_tensor(memoryview(b"\0" * 40), np.dtype(np.float32), (3, 4), 100)


def test_bytes_elements_round_trip() -> None:
    array = np.array([b"a", b"", "\u00e9".encode()], dtype=np.object_)
    raw = binary.encode_tensor(array)
    assert raw[:4] == struct.pack("<I", 1)
    decoded = binary.decode_tensor(memoryview(raw), np.dtype(np.object_), (3,), 100)
    assert list(decoded) == ["a", "", "\u00e9"]


def test_bytes_elements_must_be_utf8_text() -> None:
    with pytest.raises(BadRequest, match="not UTF-8"):
        binary.decode_bytes_elements(memoryview(struct.pack("<I", 1) + b"\xff"), 1, 100)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x00", "inside the length"),
        (struct.pack("<I", 10) + b"abc", "past the data"),
        (struct.pack("<I", 1) + b"ab", "after its"),
    ],
)
def test_bytes_elements_are_bounds_checked(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        binary.decode_bytes_elements(memoryview(raw), 1, 100)


def test_bytes_element_over_limit_is_refused() -> None:
    raw = struct.pack("<I", 5) + b"hello"
    with pytest.raises(BadRequest, match="over the limit"):
        binary.decode_bytes_elements(memoryview(raw), 1, 4)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=8))
def test_random_bytes_tensors_decode_or_fail_cleanly(raw: bytes, count: int) -> None:
    try:
        out = binary.decode_bytes_elements(memoryview(raw), count, 1 << 20)
    except BadRequest:
        return
    assert len(out) == count
    assert binary.encode_bytes_elements(out) == raw
