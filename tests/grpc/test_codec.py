"""The gRPC codec: messages to the data plane's requests and back, checked against
tritonclient's own encoding and decoding of the same messages."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import InferResult, model_config_pb2, service_pb2
from tritonclient.utils import serialize_byte_tensor

from app.errors import BadRequest
from app.grpc import codec
from app.protocol.datatypes import V2_TO_NUMPY
from app.protocol.limits import RequestLimits
from app.protocol.v2 import InferRequest, RequestedOutput

LIMITS = RequestLimits(max_elements=4096, max_inputs=4, max_bytes_element=64)
DATATYPES = sorted(V2_TO_NUMPY)
# The protocol's typed field of each datatype (FP16 has none: it travels raw only).
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
ROUND_TRIPS = settings(max_examples=30, deadline=None)


def arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``datatype`` of up to 3 small dimensions (empty ones included)."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    if datatype == "BYTES":
        return shapes.flatmap(
            lambda shape: st.lists(
                st.text(max_size=8), min_size=math.prod(shape), max_size=math.prod(shape)
            ).map(lambda items: np.array(items + [""], dtype=object)[:-1].reshape(shape))
        )
    return hnp.arrays(V2_TO_NUMPY[datatype], shapes)


def raw_request(**tensors: tuple[str, np.ndarray]) -> service_pb2.ModelInferRequest:
    """Tensors as tritonclient sends them: every input's data in raw_input_contents."""
    message = service_pb2.ModelInferRequest(model_name="m")
    for name, (datatype, array) in tensors.items():
        message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if datatype == "BYTES":
            serialized = serialize_byte_tensor(array)
            message.raw_input_contents.append(serialized.item() if serialized.size else b"")
        else:
            message.raw_input_contents.append(array.tobytes())
    return message


def typed_request(**tensors: tuple[str, np.ndarray]) -> service_pb2.ModelInferRequest:
    """Tensors in the typed ``contents`` fields."""
    message = service_pb2.ModelInferRequest(model_name="m")
    for name, (datatype, array) in tensors.items():
        tensor = message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        values = array.ravel().tolist()
        if datatype == "BYTES":
            values = [v.encode() for v in values]
        getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(values)
    return message


def assert_same(decoded: np.ndarray, sent: np.ndarray) -> None:
    assert decoded.shape == sent.shape
    assert decoded.dtype == sent.dtype
    np.testing.assert_array_equal(decoded, sent)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_tensors_decode_as_sent(datatype: str) -> None:
    @ROUND_TRIPS
    @given(array=arrays(datatype))
    def check(array: np.ndarray) -> None:
        request = codec.decode_infer_request(raw_request(x=(datatype, array)), LIMITS)
        assert_same(request.inputs["x"], array)

    check()


@pytest.mark.parametrize("datatype", list(TYPED_FIELDS))
def test_typed_contents_decode_as_sent(datatype: str) -> None:
    @ROUND_TRIPS
    @given(array=arrays(datatype))
    def check(array: np.ndarray) -> None:
        request = codec.decode_infer_request(typed_request(x=(datatype, array)), LIMITS)
        assert_same(request.inputs["x"], array)

    check()


@pytest.mark.parametrize("datatype", DATATYPES)
def test_responses_decode_in_tritonclient_as_computed(datatype: str) -> None:
    @ROUND_TRIPS
    @given(first=arrays(datatype), second=arrays(datatype))
    def check(first: np.ndarray, second: np.ndarray) -> None:
        asked = InferRequest({}, "id-7", [RequestedOutput("b", True), RequestedOutput("a", True)])
        response = codec.encode_infer_response("m", "3", {"a": first, "b": second}, asked)
        assert (response.model_name, response.model_version, response.id) == ("m", "3", "id-7")
        # In the order asked for, not the model's.
        assert [o.name for o in response.outputs] == ["b", "a"]
        result = InferResult(response)
        for name, sent in (("a", first), ("b", second)):
            assert result.get_output(name).datatype == datatype
            got = result.as_numpy(name)
            assert got is not None and got.shape == sent.shape
            if datatype == "BYTES":
                assert [v.decode() for v in got.ravel()] == list(sent.ravel())
            else:
                assert_same(got, sent)

    check()


def test_every_output_in_the_models_order_when_none_is_asked_for() -> None:
    outputs = {"z": np.zeros(2, np.float32), "a": np.ones(1, np.int64)}
    response = codec.encode_infer_response("m", "1", outputs, InferRequest({}))
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("z", "FP32", [2]),
        ("a", "INT64", [1]),
    ]
    assert response.id == ""


def test_request_fields_reach_the_data_plane() -> None:
    message = raw_request(a=("FP32", np.ones((1, 2), np.float32)))
    message.id = "req-1"
    message.outputs.add(name="y")
    message.parameters["timeout"].int64_param = 2500
    message.parameters["note"].string_param = "x"
    message.parameters["flag"].bool_param = True
    request = codec.decode_infer_request(message, LIMITS)
    assert request.id == "req-1"
    assert request.output_names() == ["y"]
    assert request.timeout_us == 2500
    assert request.parameters == {"timeout": 2500, "note": "x", "flag": True}


def test_a_request_without_id_outputs_or_timeout() -> None:
    request = codec.decode_infer_request(
        raw_request(a=("INT32", np.arange(3, dtype=np.int32))), LIMITS
    )
    assert request.id is None
    assert request.output_names() is None
    assert request.timeout_us is None


def test_parameter_values_of_every_kind() -> None:
    parameter = service_pb2.InferParameter
    assert codec.parameter_value(parameter(bool_param=False)) is False
    assert codec.parameter_value(parameter(int64_param=-3)) == -3
    assert codec.parameter_value(parameter(uint64_param=2**64 - 1)) == 2**64 - 1
    assert codec.parameter_value(parameter(double_param=0.5)) == 0.5
    assert codec.parameter_value(parameter(string_param="s")) == "s"
    assert codec.parameter_value(parameter()) is None
    assert codec.parameter_value(service_pb2.ModelRepositoryParameter(bytes_param=b"\0")) == b"\0"


def _set(path: str, value: Any) -> Callable[[service_pb2.ModelInferRequest], None]:
    def change(message: service_pb2.ModelInferRequest) -> None:
        *parents, leaf = path.split(".")
        target: Any = message
        for part in parents:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        if isinstance(value, list):
            field = getattr(target, leaf)
            del field[:]
            field.extend(value)
        else:
            setattr(target, leaf, value)

    return change


def _raw_entries(count: int) -> Callable[[service_pb2.ModelInferRequest], None]:
    def change(message: service_pb2.ModelInferRequest) -> None:
        del message.raw_input_contents[count:]

    return change


def _timeout(kind: str, value: object) -> Callable[[service_pb2.ModelInferRequest], None]:
    def change(message: service_pb2.ModelInferRequest) -> None:
        setattr(message.parameters["timeout"], kind, value)

    return change


def _extra_inputs(count: int) -> Callable[[service_pb2.ModelInferRequest], None]:
    def change(message: service_pb2.ModelInferRequest) -> None:
        for i in range(count):
            message.inputs.add(name=f"extra{i}", datatype="FP32", shape=[1])
            message.raw_input_contents.append(b"\0\0\0\0")

    return change


RAW_MISTAKES = {
    "no name": (_set("inputs.0.name", ""), "needs a name"),
    "same name twice": (_set("inputs.1.name", "a"), "appears twice"),
    "unknown datatype": (_set("inputs.0.datatype", "FP8"), "unknown datatype 'FP8'"),
    "lowercase datatype": (_set("inputs.0.datatype", "fp32"), "unknown datatype"),
    "negative dimension": (_set("inputs.0.shape", [-1, 2]), "negative dimension"),
    "too many elements": (_set("inputs.0.shape", [4097]), "over the limit"),
    "data shorter than shape": (_set("inputs.0.shape", [2, 2]), "needs 16"),
    "data longer than shape": (_set("inputs.0.shape", [1]), "needs 4"),
    "raw data for some inputs": (_raw_entries(1), "2 inputs"),
    "too many inputs": (_extra_inputs(3), "over the limit of 4"),
    "string timeout": (_timeout("string_param", "soon"), "parameters.timeout"),
    "negative timeout": (_timeout("int64_param", -1), "parameters.timeout"),
    "bool timeout": (_timeout("bool_param", True), "parameters.timeout"),
}


@pytest.mark.parametrize("mistake", list(RAW_MISTAKES))
def test_malformed_raw_requests_are_bad_requests(mistake: str) -> None:
    change, message_part = RAW_MISTAKES[mistake]
    message = raw_request(a=("FP32", np.ones((1, 2), np.float32)), b=("INT8", np.ones(3, np.int8)))
    change(message)
    with pytest.raises(BadRequest, match=message_part):
        codec.decode_infer_request(message, LIMITS)


def test_a_request_without_inputs_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="non-empty"):
        codec.decode_infer_request(service_pb2.ModelInferRequest(model_name="m"), LIMITS)


def test_elements_are_counted_over_every_input() -> None:
    half = np.zeros(2048, np.uint8)
    codec.decode_infer_request(raw_request(a=("UINT8", half), b=("UINT8", half)), LIMITS)
    over = raw_request(a=("UINT8", half), b=("UINT8", half), c=("UINT8", np.zeros(1, np.uint8)))
    with pytest.raises(BadRequest, match="more than 4096 tensor elements"):
        codec.decode_infer_request(over, LIMITS)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("INT8", 128), ("INT8", -129), ("INT16", 2**15), ("UINT8", 256), ("UINT16", 2**16)],
)
def test_typed_values_out_of_their_datatypes_range_are_refused(datatype: str, value: int) -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="a", datatype=datatype, shape=[2])
    getattr(tensor.contents, TYPED_FIELDS[datatype]).extend([0, value])
    with pytest.raises(BadRequest, match=f"out of the range of {datatype}"):
        codec.decode_infer_request(message, LIMITS)


def test_typed_count_must_match_the_shape() -> None:
    message = typed_request(a=("FP64", np.ones(3)))
    message.inputs[0].shape[:] = [4]
    with pytest.raises(BadRequest, match="fp64_contents has 3 elements, shape \\[4\\] needs 4"):
        codec.decode_infer_request(message, LIMITS)


def test_typed_data_in_another_datatypes_field_is_refused() -> None:
    message = typed_request(a=("INT32", np.arange(3, dtype=np.int32)))
    message.inputs[0].datatype = "INT64"
    with pytest.raises(BadRequest, match="int64_contents has 0 elements"):
        codec.decode_infer_request(message, LIMITS)


def test_fp16_has_no_typed_field() -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(BadRequest, match="FP16 data must be sent in raw_input_contents"):
        codec.decode_infer_request(message, LIMITS)


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_bytes_elements_must_be_utf8_and_within_the_limit(typed: bool) -> None:
    def message_with(element: bytes) -> service_pb2.ModelInferRequest:
        array = np.array([b"ok", element], dtype=object)
        if not typed:
            return raw_request(s=("BYTES", array))
        message = service_pb2.ModelInferRequest(model_name="m")
        message.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
            list(array)
        )
        return message

    decoded = codec.decode_infer_request(message_with("\u00e9".encode() * 32), LIMITS)
    assert decoded.inputs["s"][1] == "\u00e9" * 32
    with pytest.raises(BadRequest, match="not UTF-8"):
        codec.decode_infer_request(message_with(b"\xff\xfe"), LIMITS)
    with pytest.raises(BadRequest, match="BYTES element 1"):
        codec.decode_infer_request(message_with(b"x" * 65), LIMITS)


def test_raw_bytes_elements_must_fill_their_entry_exactly() -> None:
    message = raw_request(s=("BYTES", np.array([b"abc"], dtype=object)))
    message.raw_input_contents[0] += b"\0"
    with pytest.raises(BadRequest, match="1 bytes after its 1 elements"):
        codec.decode_infer_request(message, LIMITS)
    message.raw_input_contents[0] = b"\x10\0\0\0abc"
    with pytest.raises(BadRequest, match="past the data's end"):
        codec.decode_infer_request(message, LIMITS)


def test_metadata_keeps_the_protocols_fields_only() -> None:
    doc = {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
        "providers": ["CPUExecutionProvider"],
        "max_batch_size": 8,
    }
    message = codec.model_metadata(doc)
    assert list(message.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in message.inputs] == [("x", "FP32", [-1, 3])]
    assert [(t.name, t.datatype, list(t.shape)) for t in message.outputs] == [("y", "BYTES", [-1])]


def test_config_is_tritons_message_without_this_servers_keys() -> None:
    doc = {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 16,
        "input": [{"name": "x", "data_type": "TYPE_FP16", "dims": [3]}],
        "output": [{"name": "y", "data_type": "TYPE_STRING", "dims": [-1]}],
        "instance_group": [{"count": 2, "kind": "KIND_CPU", "gpus": []}],
        "version_policy": {"latest": {"num_versions": 1}},
        "dynamic_batching": {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 100},
        "providers": ["CPUExecutionProvider"],
    }
    config = codec.model_config(doc).config
    assert (config.name, config.max_batch_size, config.backend) == ("m", 16, "onnxruntime")
    assert config.input[0].data_type == model_config_pb2.TYPE_FP16
    assert config.output[0].data_type == model_config_pb2.TYPE_STRING
    assert list(config.output[0].dims) == [-1]
    assert config.instance_group[0].count == 2
    assert config.version_policy.latest.num_versions == 1
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_statistics_and_index_messages() -> None:
    entry = {
        "name": "m",
        "version": "1",
        "last_inference": 5,
        "inference_count": 6,
        "execution_count": 3,
        "inference_stats": {"success": {"count": 3, "ns": 900}, "queue": {"count": 3, "ns": 9}},
        "batch_stats": [{"batch_size": 2, "compute_infer": {"count": 3, "ns": 30}}],
    }
    stats = codec.model_statistics([entry]).model_stats[0]
    assert (stats.inference_count, stats.execution_count) == (6, 3)
    assert (stats.inference_stats.success.count, stats.inference_stats.success.ns) == (3, 900)
    assert stats.batch_stats[0].compute_infer.ns == 30
    index = codec.repository_index(
        [{"name": "m", "version": "1", "state": "UNAVAILABLE", "reason": "bad graph"}]
    )
    assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
        ("m", "1", "UNAVAILABLE", "bad graph")
    ]
