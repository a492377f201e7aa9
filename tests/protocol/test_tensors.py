from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadRequest
from app.protocol.tensors import decode_json_tensor, json_data, parse_shape

F32 = np.dtype(np.float32)


def test_flat_and_nested_data_give_the_same_array() -> None:
    flat = decode_json_tensor([1, 2, 3, 4], F32, (2, 2), "x")
    nested = decode_json_tensor([[1, 2], [3, 4]], F32, (2, 2), "x")
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == F32


def test_shape_is_taken_from_nesting_when_not_given() -> None:
    assert decode_json_tensor([[1, 2, 3]], F32, None, "x").shape == (1, 3)


@pytest.mark.parametrize(
    ("data", "dtype", "message"),
    [
        (["a", "b"], F32, "got strings"),
        ([1.5, 2.0], np.dtype(np.int32), "expected int32"),
        ([300], np.dtype(np.uint8), "out of range"),
        ([-1], np.dtype(np.uint32), "out of range"),
        ([1, 0], np.dtype(np.bool_), "expected bool"),
        ([[1, 2], [3]], F32, "regular array"),
        ([1, 2, 3], F32, "needs 4"),
        ([1, "a"], F32, "got"),
    ],
)
def test_wrong_data_is_a_bad_request(data: list[object], dtype: np.dtype, message: str) -> None:
    shape = (4,) if message == "needs 4" else (len(data),)
    with pytest.raises(BadRequest, match=message):
        decode_json_tensor(data, dtype, shape, "x")


def test_bytes_data_must_be_strings() -> None:
    out = decode_json_tensor([["a", "bc"]], np.dtype(np.object_), (1, 2), "s")
    assert out.tolist() == [["a", "bc"]]
    with pytest.raises(BadRequest, match="must be strings"):
        decode_json_tensor([1, 2], np.dtype(np.object_), (2,), "s")


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    data: list[object] = [1.0]
    for _ in range(10):
        data = [data]
    with pytest.raises(BadRequest, match="nested deeper"):
        decode_json_tensor(data, F32, None, "x", max_depth=5)


@pytest.mark.parametrize("shape", [[-1], [1.5], "3", [True]])
def test_shape_must_be_non_negative_integers(shape: object) -> None:
    with pytest.raises(BadRequest):
        parse_shape(shape, "x", 100)


def test_shape_with_too_many_elements_is_refused() -> None:
    with pytest.raises(BadRequest, match="over the limit"):
        parse_shape([1000, 1000], "x", 10_000)


def test_float16_output_is_widened_for_json() -> None:
    out = json_data(np.array([0.5, 1.0], dtype=np.float16))
    assert out.dtype == np.float32


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4),
    max_leaves=20,
)
dtypes = st.sampled_from(
    [np.bool_, np.uint8, np.int8, np.int32, np.uint64, np.int64, np.float16, np.float32]
)


@given(json_values, dtypes, st.lists(st.integers(0, 4), max_size=3))
def test_any_json_decodes_or_is_a_bad_request(data: object, dtype: type, shape: list[int]) -> None:
    try:
        out = decode_json_tensor(data, np.dtype(dtype), tuple(shape), "x")
    except BadRequest:
        return
    assert out.shape == tuple(shape)
    assert out.dtype == np.dtype(dtype)
