"""Property tests of the tensor codecs: any input decodes consistently or is a BadRequest.

Random shapes, datatypes, truncations and size lies must never raise anything else (which
the server would turn into a 500) and must never yield an array that disagrees with what the
request declared.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from app.errors import BadRequest
from app.protocol import binary
from app.protocol.datatypes import V2_TO_NUMPY
from app.protocol.limits import RequestLimits
from app.protocol.tensors import decode_json_tensor, parse_shape
from app.protocol.v2 import InferRequest, parse_infer_request

LIMITS = RequestLimits(
    max_request_bytes=1 << 20,
    max_elements=4096,
    max_depth=6,
    max_inputs=4,
    max_bytes_element=64,
)
DATATYPES = sorted(V2_TO_NUMPY)
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")) * 15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# What orjson can hand the decoder: 64-bit integers, finite doubles, text, and containers.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-300, max_value=300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=40,
)
# Dimensions as JSON carries them (orjson reads integers of up to 64 bits).
dims = st.one_of(
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=-3, max_value=2**64 - 1),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]),
)
shapes = st.one_of(
    st.lists(dims, max_size=5),
    st.lists(st.sampled_from([0, 1]), min_size=30, max_size=70),
)
shape_values = st.one_of(shapes, json_values)


def outcome(tried: Counter[str], call: Any) -> Any:
    """Run ``call``; count and return its result, or count a BadRequest and return None."""
    tried["cases"] += 1
    try:
        result = call()
    except BadRequest:
        tried["refused (400)"] += 1
        return None
    tried["accepted"] += 1
    return result


def elements(shape: tuple[int, ...]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


# ---- JSON tensor decoder -----------------------------------------------------------------------


def regular_data(datatype: str) -> st.SearchStrategy[tuple[list[int], Any]]:
    """A shape and data that fit it (nested or flat), to check accepted decodes too."""

    def build(shape: list[int]) -> st.SearchStrategy[tuple[list[int], Any]]:
        count = elements(tuple(shape))
        if datatype == "BYTES":
            leaf: st.SearchStrategy[Any] = st.text(max_size=20)
        elif datatype == "BOOL":
            leaf = st.booleans()
        elif datatype.startswith("FP"):
            bound = 6e4 if datatype == "FP16" else 1e6
            leaf = st.floats(-bound, bound, allow_nan=False)
        else:
            info = np.iinfo(V2_TO_NUMPY[datatype])  # type: ignore[type-var]
            leaf = st.integers(max(int(info.min), -300), min(int(info.max), 300))
        flat = st.lists(leaf, min_size=count, max_size=count)
        return st.tuples(st.just(shape), flat)

    return st.lists(st.integers(0, 4), max_size=3).flatmap(build)


@FUZZ
@given(data=json_values, datatype=st.sampled_from(DATATYPES), shape=st.none() | shapes)
def test_json_tensor_decoder_never_fails_otherwise(
    tried: Counter[str], data: Any, datatype: str, shape: list[int] | None
) -> None:
    dtype = V2_TO_NUMPY[datatype]

    def decode() -> np.ndarray:
        parsed = None if shape is None else parse_shape(shape, "x", LIMITS.max_elements)
        return decode_json_tensor(
            data, dtype, parsed, "x", LIMITS.max_depth, LIMITS.max_bytes_element
        )

    array = outcome(tried, decode)
    if array is not None:
        assert array.dtype == dtype
        if shape is not None:
            assert array.shape == tuple(shape)


@FUZZ
@given(st.sampled_from(DATATYPES).flatmap(lambda t: st.tuples(st.just(t), regular_data(t))))
def test_json_tensor_decoder_keeps_values(
    tried: Counter[str], case: tuple[str, tuple[list[int], list[Any]]]
) -> None:
    datatype, (shape, flat) = case
    dtype = V2_TO_NUMPY[datatype]
    array = outcome(
        tried,
        lambda: decode_json_tensor(
            flat, dtype, tuple(shape), "x", LIMITS.max_depth, LIMITS.max_bytes_element
        ),
    )
    if datatype == "BYTES" and any(len(s.encode()) > LIMITS.max_bytes_element for s in flat):
        assert array is None
        return
    assert array is not None, (datatype, shape, flat)
    assert array.shape == tuple(shape)
    if datatype == "BYTES":
        assert [str(v) for v in array.ravel()] == flat
    elif flat:
        np.testing.assert_array_equal(array.ravel(), np.array(flat).astype(dtype))


@FUZZ
@given(value=shape_values)
def test_shape_parser(tried: Counter[str], value: Any) -> None:
    shape = outcome(tried, lambda: parse_shape(value, "x", LIMITS.max_elements))
    if shape is not None:
        assert all(isinstance(d, int) and 0 <= d for d in shape)
        assert elements(shape) <= LIMITS.max_elements


# ---- binary codec ------------------------------------------------------------------------------


@st.composite
def binary_case(draw: st.DrawFn) -> tuple[str, tuple[int, ...], bytes]:
    datatype = draw(st.sampled_from(DATATYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    count = elements(shape)
    if datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=80), min_size=count, max_size=count))
        exact = b"".join(struct.pack("<I", len(b)) + b for b in items)
    else:
        exact = draw(st.binary(min_size=count * V2_TO_NUMPY[datatype].itemsize,
                               max_size=count * V2_TO_NUMPY[datatype].itemsize))  # fmt: skip
    lie = draw(st.sampled_from(["exact", "truncate", "extend", "random"]))
    if lie == "truncate" and exact:
        exact = exact[: draw(st.integers(0, len(exact) - 1))]
    elif lie == "extend":
        exact += draw(st.binary(min_size=1, max_size=16))
    elif lie == "random":
        exact = draw(st.binary(max_size=256))
    return datatype, shape, exact


@FUZZ
@given(case=binary_case())
def test_binary_tensor_decoder(
    tried: Counter[str], case: tuple[str, tuple[int, ...], bytes]
) -> None:
    datatype, shape, data = case
    dtype = V2_TO_NUMPY[datatype]
    array = outcome(
        tried,
        lambda: binary.decode_tensor(memoryview(data), dtype, shape, LIMITS.max_bytes_element),
    )
    if array is None:
        return
    assert array.shape == shape
    if datatype == "BYTES":
        assert binary.encode_tensor(array) == data
    else:
        assert array.dtype == dtype.newbyteorder("<")
        assert array.tobytes() == data


@FUZZ
@given(
    array=st.sampled_from([d for d in DATATYPES if d != "BYTES"]).flatmap(
        lambda t: hnp.arrays(V2_TO_NUMPY[t], hnp.array_shapes(min_dims=0, max_dims=3, min_side=0))
    )
)
def test_binary_round_trip(tried: Counter[str], array: np.ndarray) -> None:
    tried["cases"] += 1
    raw = binary.encode_tensor(array)
    back = binary.decode_tensor(memoryview(raw), array.dtype, array.shape, 64)
    assert back.tobytes() == array.astype(array.dtype.newbyteorder("<")).tobytes()
    assert back.shape == array.shape


@FUZZ
@given(texts=st.lists(st.text(max_size=16), max_size=12))
def test_bytes_round_trip(tried: Counter[str], texts: list[str]) -> None:
    tried["cases"] += 1
    array = np.array(texts, dtype=np.object_)
    raw = binary.encode_tensor(array)
    back = binary.decode_tensor(memoryview(raw), np.dtype(np.object_), (len(texts),), 64)
    assert list(back) == texts


# ---- v2 requests (JSON and binary) -------------------------------------------------------------


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True once in ``n`` draws (integers(0, n) would favour its bounds)."""
    return st.sampled_from([True] + [False] * (n - 1))


@st.composite
def v2_input(draw: st.DrawFn, name: str) -> tuple[dict[str, Any], bytes]:
    """One input, valid by construction, then perhaps given one lie; and its binary part."""
    datatype = draw(st.sampled_from(DATATYPES))
    shape, flat = draw(regular_data(datatype))
    item: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    raw = b""
    if draw(st.booleans()):
        array = np.array(flat, dtype=V2_TO_NUMPY[datatype]).reshape(shape)
        raw = binary.encode_tensor(array)
        item["parameters"] = {"binary_data_size": len(raw)}
    else:
        item["data"] = flat
    lie = draw(st.sampled_from(["none"] * 12 + ["field", "drop", "size", "nest"]))
    if lie == "field":
        key = draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]))
        item[key] = draw(shape_values if key == "shape" else json_values)
    elif lie == "drop":
        item.pop(draw(st.sampled_from(sorted(item))))
    elif lie == "size" and "parameters" in item:
        item["parameters"]["binary_data_size"] = draw(
            st.one_of(st.integers(-2, len(raw) + 8), json_scalars)
        )
    elif lie == "nest" and "data" in item:
        item["data"] = [item["data"]] * draw(st.integers(0, 3))
    return item, raw


@st.composite
def v2_request(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A v2 body (JSON, or JSON header plus binary) and its header length, with lies."""
    count = draw(st.sampled_from([1, 1, 1, 2, 2, 3, LIMITS.max_inputs, 0, LIMITS.max_inputs + 1]))
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=count, max_size=count, unique=True))
    parts = [draw(v2_input(name)) for name in names]
    doc: dict[str, Any] = {"inputs": [item for item, _ in parts]}
    if draw(one_in(10)):
        doc["inputs"] = draw(json_values)
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.one_of(st.lists(st.fixed_dictionaries({"name": st.sampled_from("ab")})), json_values)
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.sampled_from([{"binary_data_output": True}, {"timeout": 5}])
            | st.dictionaries(st.text(max_size=8), json_values, max_size=3)
            | json_values
        )
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=20) | st.text(max_size=20) | json_scalars)
    header = orjson.dumps(doc)
    tail = b"".join(raw for _, raw in parts)
    length: int | None = len(header) if tail or draw(st.booleans()) else None
    body = header + tail
    lie = draw(st.sampled_from(["none"] * 6 + ["length", "truncate", "extend"]))
    if lie == "length":
        length = draw(st.integers(0, len(body) + 8))
    elif lie == "truncate":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif lie == "extend":
        body += draw(st.binary(min_size=1, max_size=32))
    return body, length


def check_decoded(request: InferRequest) -> None:
    """An accepted request agrees with itself: every array has its declared size."""
    assert 0 < len(request.inputs) <= LIMITS.max_inputs
    assert sum(a.size for a in request.inputs.values()) <= LIMITS.max_elements
    for array in request.inputs.values():
        assert isinstance(array, np.ndarray)
        assert array.dtype.kind in "biufO"


@FUZZ
@given(case=v2_request())
def test_v2_request_parser(tried: Counter[str], case: tuple[bytes, int | None]) -> None:
    body, length = case

    def parse() -> InferRequest:
        header_length = binary.parse_header_length(None if length is None else str(length))
        return parse_infer_request(body, header_length, LIMITS)

    request = outcome(tried, parse)
    if request is not None:
        check_decoded(request)


@FUZZ
@given(body=st.binary(max_size=512), length=st.none() | st.text(max_size=12))
def test_v2_request_parser_on_random_bytes(
    tried: Counter[str], body: bytes, length: str | None
) -> None:
    request = outcome(
        tried,
        lambda: parse_infer_request(body, binary.parse_header_length(length), LIMITS),
    )
    if request is not None:
        check_decoded(request)


@pytest.mark.parametrize("cut", [0, 1, 10, 30, 60, 90, 119])
def test_truncated_binary_request_is_refused(cut: int) -> None:
    """Every truncation of a valid binary request is a 400 (not a partial decode)."""
    data = np.arange(12, dtype=np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [3, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }  # fmt: skip
    )
    body = (header + data)[: len(header) + 48 - 48 + cut % (len(data))]
    if len(body) == len(header) + len(data):
        return
    with pytest.raises(BadRequest):
        parse_infer_request(body, len(header), LIMITS)


# ---- regressions the properties above found ----------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "data"),
    [([2**63, 0], []), ([0, 2**40, 3], []), ([0, 2**64 - 1], []), ([1] * 70, [0.5])],
    ids=["past-int64", "huge-with-zero", "u64-max-with-zero", "70-dims"],
)
def test_shapes_numpy_cannot_hold_are_400(shape: list[int], data: list[float]) -> None:
    doc = {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}
    with pytest.raises(BadRequest):
        parse_infer_request(orjson.dumps(doc), None, LIMITS)


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "UINT64", "INT64", "FP16"])
def test_empty_tensor_of_any_type_is_accepted(datatype: str) -> None:
    doc = {"inputs": [{"name": "x", "shape": [0, 3], "datatype": datatype, "data": []}]}
    decoded = parse_infer_request(orjson.dumps(doc), None, LIMITS)
    assert decoded.inputs["x"].shape == (0, 3)
    assert decoded.inputs["x"].dtype == V2_TO_NUMPY[datatype]
