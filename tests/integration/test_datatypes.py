"""Every ONNX tensor type round-trips through JSON and binary v2 infer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.onnx_models import V2_TO_ONNX, identity, write_model
from tests.server import RunningServer

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}  # fmt: skip


def sample(datatype: str) -> np.ndarray:
    """Values that exercise each type's range, shaped [2, 3]."""
    if datatype == "BYTES":
        return np.array([[b"a", b"", "\u00e9t\u00e9".encode()], [b"x" * 20, b"b", b"c"]], object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind == "f":
        return np.array([[0.5, -1.25, 3.0], [1e3, -0.0, 7.75]], dtype)
    info = np.iinfo(dtype)  # type: ignore[type-var]
    return np.array([[info.min, info.max, 0], [1, info.max // 2, 7]], dtype)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    for datatype in V2_TO_ONNX:
        write_model(root, f"id_{datatype.lower()}", identity(datatype, ["N", 3]))
    with RunningServer(root) as running:
        yield running


@pytest.mark.parametrize("datatype", list(V2_TO_ONNX))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_round_trip(server: RunningServer, datatype: str, binary: bool) -> None:
    client = httpclient.InferenceServerClient(server.host_port)
    data = sample(datatype)
    tensor = httpclient.InferInput("input", list(data.shape), datatype)
    tensor.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(
        f"id_{datatype.lower()}",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("output", binary_data=binary)],
    )
    out = result.as_numpy("output")
    assert out is not None
    assert result.get_output("output")["datatype"] == datatype
    assert out.shape == data.shape
    if datatype == "BYTES":
        # JSON carries text, so tritonclient hands back str there and bytes for binary.
        got = [v.encode() if isinstance(v, str) else bytes(v) for v in out.ravel()]
        assert got == list(data.ravel())
    else:
        assert out.dtype == data.dtype
        np.testing.assert_array_equal(out, data)


def test_nested_json_data_is_accepted(server: RunningServer) -> None:
    import httpx

    body = {
        "inputs": [
            {"name": "input", "shape": [2, 3], "datatype": "INT32", "data": [[1, 2, 3], [4, 5, 6]]}
        ]
    }
    r = httpx.post(f"{server.url}/v2/models/id_int32/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1, 2, 3, 4, 5, 6]
