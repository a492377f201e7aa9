"""Every tensor datatype round-trips through gRPC ModelInfer, as raw tensors (tritonclient)
and as typed contents (the service stub, the way other clients send them)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.grpc.probes import infer_input, status
from tests.integration.test_datatypes import sample
from tests.onnx_models import V2_TO_ONNX, identity, write_model
from tests.server import RunningServer

# The typed field of each datatype (FP16 has none: it travels raw only).
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    for datatype in V2_TO_ONNX:
        write_model(root, f"id_{datatype.lower()}", identity(datatype, ["N", 3]))
    with RunningServer(root, log_path=root.parent / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        yield client


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def check_output(result: grpcclient.InferResult, datatype: str, sent: np.ndarray) -> None:
    output = result.get_output("output")
    assert output is not None and output.datatype == datatype
    got = result.as_numpy("output")
    assert got is not None and got.shape == sent.shape
    if datatype == "BYTES":
        assert list(got.ravel()) == list(sent.ravel())
    else:
        assert got.dtype == sent.dtype
        np.testing.assert_array_equal(got, sent)


@pytest.mark.parametrize("datatype", list(V2_TO_ONNX))
def test_raw_round_trip(client: grpcclient.InferenceServerClient, datatype: str) -> None:
    data = sample(datatype)
    result = client.infer(
        f"id_{datatype.lower()}", [infer_input("input", data, datatype)], request_id=datatype
    )
    assert result.get_response().id == datatype
    check_output(result, datatype, data)


@pytest.mark.parametrize("datatype", list(TYPED_FIELDS))
def test_typed_contents_round_trip(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str
) -> None:
    data = sample(datatype)
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=data.shape)
    getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(data.ravel().tolist())
    # The answer is raw, whatever the request used.
    check_output(grpcclient.InferResult(stub.ModelInfer(request, timeout=30)), datatype, data)


def test_fp16_needs_raw_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="id_fp16")
    request.inputs.add(name="input", datatype="FP16", shape=[1, 3])
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FP16 data must be sent in raw_input_contents" in str(refused.value.details())


@pytest.mark.parametrize(
    ("datatype", "values", "message"),
    [
        ("INT8", [0, 1, 200], "out of the range of INT8"),
        ("UINT16", [0, 70_000, 1], "out of the range of UINT16"),
        ("BYTES", [b"a", b"\xff", b"c"], "not UTF-8"),
        ("INT32", [1, 2], "int_contents has 2 elements, shape [1, 3] needs 3"),
    ],
)
def test_typed_contents_that_do_not_fit_are_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    datatype: str,
    values: list[object],
    message: str,
) -> None:
    request = service_pb2.ModelInferRequest(model_name=f"id_{datatype.lower()}")
    tensor = request.inputs.add(name="input", datatype=datatype, shape=[1, 3])
    getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(values)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(refused.value.details())


def test_a_datatype_other_than_the_models_is_invalid(
    client: grpcclient.InferenceServerClient,
) -> None:
    code, message = status(
        lambda: client.infer("id_int64", [infer_input("input", sample("INT32"))])
    )
    assert code == "INVALID_ARGUMENT"
    assert "must be INT64" in message
