from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadRequest
from app.protocol import binary
from app.protocol.limits import RequestLimits
from app.protocol.v2 import (
    InferRequest,
    RequestedOutput,
    encode_infer_response,
    parse_infer_request,
)

LIMITS = RequestLimits()


def binary_body(header: dict[str, object], *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def test_json_request_is_decoded_with_id_and_outputs() -> None:
    body = json.dumps(
        {
            "id": "7",
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    request = parse_infer_request(body, None, LIMITS)
    assert request.id == "7"
    assert request.inputs["x"].dtype == np.int32
    assert request.outputs == [RequestedOutput("y", True)]


def test_binary_inputs_follow_the_header_in_order() -> None:
    a = np.arange(4, dtype=np.float32)
    b = np.array([True, False])
    body, length = binary_body(
        {
            "inputs": [
                {"name": "a", "shape": [4], "datatype": "FP32",
                 "parameters": {"binary_data_size": 16}},
                {"name": "b", "shape": [2], "datatype": "BOOL",
                 "parameters": {"binary_data_size": 2}},
            ]
        },
        a.tobytes(),
        b.tobytes(),
    )  # fmt: skip
    request = parse_infer_request(body, length, LIMITS)
    np.testing.assert_array_equal(request.inputs["a"], a)
    np.testing.assert_array_equal(request.inputs["b"], b)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "non-empty"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "string 'name'"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FLOAT", "data": [1]}]}, "unknown"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, "neither"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}, "twice"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
          "outputs": [{}]}, "output"),
        ({"id": 5, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
         "id"),
    ],
)  # fmt: skip
def test_malformed_requests_are_bad_requests(doc: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_infer_request(json.dumps(doc).encode(), None, LIMITS)


def test_binary_size_past_the_body_is_refused() -> None:
    body, length = binary_body(
        {"inputs": [{"name": "a", "shape": [4], "datatype": "FP32",
                     "parameters": {"binary_data_size": 16}}]},
        b"\0" * 8,
    )  # fmt: skip
    with pytest.raises(BadRequest, match="past the end"):
        parse_infer_request(body, length, LIMITS)


def test_unclaimed_binary_bytes_are_refused() -> None:
    body, length = binary_body(
        {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}, b"\0" * 4
    )
    with pytest.raises(BadRequest, match="belong to no input"):
        parse_infer_request(body, length, LIMITS)


def test_too_many_inputs_and_elements_are_refused() -> None:
    doc = {"inputs": [{"name": "x", "shape": [100], "datatype": "FP32", "data": [0] * 100}]}
    with pytest.raises(BadRequest, match="elements"):
        parse_infer_request(json.dumps(doc).encode(), None, RequestLimits(max_elements=50))
    many = {
        "inputs": [
            {"name": f"x{i}", "shape": [1], "datatype": "FP32", "data": [0]} for i in range(3)
        ]
    }
    with pytest.raises(BadRequest, match="over the limit"):
        parse_infer_request(json.dumps(many).encode(), None, RequestLimits(max_inputs=2))


def test_response_mixes_json_and_binary_outputs() -> None:
    results = {"y": np.arange(3, dtype=np.int64), "z": np.array([[1.5]], dtype=np.float32)}
    request = InferRequest(
        inputs={}, id="9", outputs=[RequestedOutput("y", True), RequestedOutput("z", False)]
    )
    body, length = encode_infer_response("m", "1", results, request)
    assert length is not None
    header = orjson.loads(body[:length])
    assert header["id"] == "9"
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 24}
    assert header["outputs"][1]["data"] == [1.5]
    decoded = binary.decode_tensor(memoryview(body[length:]), np.dtype(np.int64), (3,), 10)
    np.testing.assert_array_equal(decoded, results["y"])


def test_plain_json_response_has_no_header_length() -> None:
    body, length = encode_infer_response("m", "1", {"y": np.array([True])}, InferRequest(inputs={}))
    assert length is None
    assert orjson.loads(body)["outputs"][0] == {
        "name": "y", "datatype": "BOOL", "shape": [1], "data": [True]
    }  # fmt: skip


@given(st.binary(max_size=200), st.integers(min_value=-5, max_value=250))
def test_random_bodies_never_raise_anything_but_bad_request(body: bytes, length: int) -> None:
    try:
        parse_infer_request(body, length, LIMITS)
    except BadRequest:
        pass


@given(
    st.sampled_from(["FP32", "INT8", "BOOL", "BYTES", "UINT64", "FP16"]),
    st.lists(st.integers(0, 3), max_size=3),
    st.integers(0, 64),
    st.binary(max_size=64),
)
def test_size_lies_are_bad_requests(
    datatype: str, shape: list[int], size: int, blob: bytes
) -> None:
    body, length = binary_body(
        {"inputs": [{"name": "a", "shape": shape, "datatype": datatype,
                     "parameters": {"binary_data_size": size}}]},
        blob,
    )  # fmt: skip
    try:
        request = parse_infer_request(body, length, LIMITS)
    except BadRequest:
        return
    assert request.inputs["a"].shape == tuple(shape)
