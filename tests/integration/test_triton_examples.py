"""Triton's published example clients, run against a real server.

Each test makes the calls of one example client of triton-inference-server/client
(src/python/examples) with ``tritonclient``, with the same data, in the same order, and
applies the same checks, error-text matches included, to the same kind of model: the
examples themselves are not shipped here and nothing is fetched at run time. Their models
(``simple``, ``simple_string``, ``simple_identity``, an image classifier) are built here as
ONNX graphs. The server runs as those clients expect one: named "triton" (the health example
checks the name) and with open management (the model-control example sends no key).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as mc
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.conftest import SAMPLE_MODELS
from tests.onnx_models import (
    add_mul,
    identity,
    mlp,
    triton_identity,
    triton_simple,
    write_model,
)
from tests.server import RunningServer

SEVEN = SAMPLE_MODELS.parent / "docs" / "seven.png"


def digits_classifier() -> onnx.ModelProto:
    """The bundled digits model with its class probabilities as its only output (the image
    example takes models of one input and one output)."""
    model = onnx.load(str(SAMPLE_MODELS / "digits" / "1" / "model.onnx"))
    kept = [o for o in model.graph.output if o.name == "probabilities"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model


def example_repository(root: Path) -> Path:
    """Seven models, as the model-control example expects of its repository."""
    labels = (SAMPLE_MODELS / "digits" / "labels.txt").read_text().split()
    write_model(root, "simple", triton_simple("INT32"), config={"max_batch_size": 8})
    write_model(root, "simple_string", triton_simple("BYTES"), config={"max_batch_size": 8})
    write_model(root, "simple_identity", triton_identity())
    write_model(root, "densenet_onnx", digits_classifier(), labels=labels)
    write_model(root, "identity_fp32", identity("FP32"))
    write_model(root, "add_mul", add_mul())
    write_model(root, "mlp", mlp())
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = example_repository(tmp_path_factory.mktemp("examples") / "models")
    env = {"ONNX_SERVE_SERVER_NAME": "triton", "ONNX_SERVE_ALLOW_OPEN_MANAGEMENT": "true"}
    with RunningServer(root, env=env) as running:
        yield running


# ---- simple_http_infer_client.py -----------------------------------------------------------


def _simple_infer(
    client: httpclient.InferenceServerClient,
    model_name: str,
    input0_data: np.ndarray,
    input1_data: np.ndarray,
    with_outputs: bool,
) -> httpclient.InferResult:
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(input0_data, binary_data=False)
    inputs[1].set_data_from_numpy(input1_data, binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    return client.infer(
        model_name,
        inputs,
        outputs=outputs if with_outputs else None,
        query_params={"test_1": 1, "test_2": 2},
        headers=None,
        request_compression_algorithm=None,
        response_compression_algorithm=None,
    )


def test_simple_http_infer_client(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(url=server.host_port)
    input0_data = np.expand_dims(np.arange(start=0, stop=16, dtype=np.int32), axis=0)
    input1_data = np.full(shape=(1, 16), fill_value=-1, dtype=np.int32)

    for with_outputs in (True, False):
        results = _simple_infer(client, "simple", input0_data, input1_data, with_outputs)
        output0_data = results.as_numpy("OUTPUT0")
        output1_data = results.as_numpy("OUTPUT1")
        for i in range(16):
            assert input0_data[0][i] + input1_data[0][i] == output0_data[0][i]
            assert input0_data[0][i] - input1_data[0][i] == output1_data[0][i]
        if with_outputs:
            statistics = client.get_inference_statistics(model_name="simple", headers=None)
            assert len(statistics["model_stats"]) == 1

    with pytest.raises(InferenceServerException) as caught:
        _simple_infer(client, "wrong_model_name", input0_data, input1_data, True)
    assert caught.value.message().startswith("Request for unknown model")


# ---- simple_http_string_infer_client.py ----------------------------------------------------


def _identity_inference(
    client: httpclient.InferenceServerClient, np_array: np.ndarray, binary_data: bool
) -> None:
    inputs = [httpclient.InferInput("INPUT0", np_array.shape, "BYTES")]
    inputs[0].set_data_from_numpy(np_array, binary_data=binary_data)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_data)]
    results = client.infer(model_name="simple_identity", inputs=inputs, outputs=outputs)
    if np_array.dtype == np.object_:
        if binary_data:
            assert np.array_equal(np_array, results.as_numpy("OUTPUT0"))
        else:
            expected_array = np.array(
                [bytes(str(x), encoding="utf-8") for x in results.as_numpy("OUTPUT0").flatten()],
                dtype=np.object_,
            ).reshape([1, 16])
            assert np.array_equal(np_array, expected_array)
    else:
        encoded_results = np.char.encode(results.as_numpy("OUTPUT0").astype(str))
        assert np.array_equal(np_array, encoded_results)


def test_simple_http_string_infer_client(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(url=server.host_port)
    in0 = np.expand_dims(np.arange(start=0, stop=16, dtype=np.int32), axis=0)
    in1 = np.ones(shape=(1, 16), dtype=np.int32)
    expected_sum = np.add(in0, in1)
    expected_diff = np.subtract(in0, in1)
    input0_data = np.array(
        [str(x).encode("utf-8") for x in in0.reshape(in0.size)], dtype=np.object_
    ).reshape(in0.shape)
    input1_data = np.array(
        [str(x).encode("utf-8") for x in in1.reshape(in1.size)], dtype=np.object_
    ).reshape(in1.shape)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "BYTES"),
        httpclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(input0_data, binary_data=True)
    inputs[1].set_data_from_numpy(input1_data, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    results = client.infer(model_name="simple_string", inputs=inputs, outputs=outputs)
    output0_data = results.as_numpy("OUTPUT0")
    output1_data = results.as_numpy("OUTPUT1")
    for i in range(16):
        assert expected_sum[0][i] == int(output0_data[0][i])
        assert expected_diff[0][i] == int(output1_data[0][i])

    null_char_data = np.array([b"he\x00llo" for _ in range(16)], dtype=np.object_).reshape([1, 16])
    _identity_inference(client, null_char_data, True)
    _identity_inference(client, null_char_data, False)
    np_bytes_data = np.array([b"\x00\x01\x02\x03" for _ in range(16)], dtype=np.bytes_)
    np_bytes_data = np_bytes_data.reshape([1, 16])
    _identity_inference(client, np_bytes_data, True)
    _identity_inference(client, np_bytes_data, False)


# ---- simple_http_health_metadata.py --------------------------------------------------------


def test_simple_http_health_metadata(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(url=server.host_port)
    assert client.is_server_live(query_params={"test_1": 1, "test_2": 2})
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata()["name"] == "triton"
    metadata = client.get_model_metadata("simple", query_params={"test_1": 1, "test_2": 2})
    assert metadata["name"] == "simple"
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("wrong_model_name")
    assert "Request for unknown model" in caught.value.message()


# ---- image_client.py (HTTP and gRPC) -------------------------------------------------------


def _parse_model(model_metadata: object, model_config: object) -> tuple[object, ...]:
    """image_client.py's ``parse_model``, over attribute access as the example has it."""
    m, c = model_metadata, model_config
    assert len(m.inputs) == 1 and len(m.outputs) == 1 and len(c.input) == 1  # type: ignore[attr-defined]
    input_metadata, input_config = m.inputs[0], c.input[0]  # type: ignore[attr-defined]
    output_metadata = m.outputs[0]  # type: ignore[attr-defined]
    assert output_metadata.datatype == "FP32"
    output_batch_dim = c.max_batch_size > 0  # type: ignore[attr-defined]
    non_one_cnt = 0
    for dim in output_metadata.shape:
        if output_batch_dim:
            output_batch_dim = False
        elif dim > 1:
            non_one_cnt += 1
            assert non_one_cnt <= 1, "expecting model output to be a vector"
    input_batch_dim = c.max_batch_size > 0  # type: ignore[attr-defined]
    assert len(input_metadata.shape) == 3 + (1 if input_batch_dim else 0)
    fmt = input_config.format
    if isinstance(fmt, str):
        fmt = dict(mc.ModelInput.Format.items())[fmt]
    assert fmt in (mc.ModelInput.FORMAT_NCHW, mc.ModelInput.FORMAT_NHWC), fmt
    if fmt == mc.ModelInput.FORMAT_NHWC:
        h, w, c_ = input_metadata.shape[1 if input_batch_dim else 0 :][:3]
    else:
        c_, h, w = input_metadata.shape[1 if input_batch_dim else 0 :][:3]
    return (
        c.max_batch_size,  # type: ignore[attr-defined]
        input_metadata.name,
        output_metadata.name,
        c_,
        h,
        w,
        fmt,
        input_metadata.datatype,
    )


class _Attributes(dict):  # type: ignore[type-arg]
    """The example reads the HTTP client's JSON through ``attrdict``; this is the same."""

    def __getattr__(self, name: str) -> object:
        value = self[name]
        if isinstance(value, dict):
            return _Attributes(value)
        if isinstance(value, list):
            return [_Attributes(v) if isinstance(v, dict) else v for v in value]
        return value


def _preprocess(img: Image.Image, fmt: int, dtype: str, c: int, h: int, w: int) -> np.ndarray:
    sample_img = img.convert("L") if c == 1 else img.convert("RGB")
    resized = np.array(sample_img.resize((w, h), Image.BILINEAR))
    if resized.ndim == 2:
        resized = resized[:, :, np.newaxis]
    scaled = resized.astype(triton_to_np_dtype(dtype))  # scaling NONE
    return np.transpose(scaled, (2, 0, 1)) if fmt == mc.ModelInput.FORMAT_NCHW else scaled


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_image_client(server: RunningServer, protocol: str) -> None:
    """``image_client.py -m densenet_onnx -c 3 -b 2 [-i grpc] seven.png``."""
    classes, batch_size = 3, 2
    client: httpclient.InferenceServerClient | grpcclient.InferenceServerClient
    module = grpcclient if protocol == "grpc" else httpclient
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(url=server.grpc_address)
        model_metadata = client.get_model_metadata(model_name="densenet_onnx", model_version="")
        model_config: object = client.get_model_config(
            model_name="densenet_onnx", model_version=""
        ).config
    else:
        client = httpclient.InferenceServerClient(url=server.host_port, concurrency=1)
        model_metadata = _Attributes(client.get_model_metadata("densenet_onnx", ""))
        model_config = _Attributes(client.get_model_config("densenet_onnx", ""))
    max_batch_size, input_name, output_name, c, h, w, fmt, dtype = _parse_model(
        model_metadata, model_config
    )
    assert max_batch_size > 0
    image = _preprocess(Image.open(SEVEN), fmt, dtype, c, h, w)  # type: ignore[arg-type]
    batched = np.stack([image] * batch_size, axis=0)
    inputs = [module.InferInput(input_name, batched.shape, dtype)]
    inputs[0].set_data_from_numpy(batched)
    outputs = [module.InferRequestedOutput(output_name, class_count=classes)]
    response = client.infer(
        "densenet_onnx", inputs, request_id="1", model_version="", outputs=outputs
    )
    this_id = response.get_response().id if protocol == "grpc" else response.get_response()["id"]
    assert this_id == "1"

    output_array = response.as_numpy(output_name)
    assert len(output_array) == batch_size
    # The scores the classes are ranked by, from a plain request of the same tensor.
    plain = client.infer("densenet_onnx", [inputs[0]]).as_numpy(output_name)
    labels = (SAMPLE_MODELS / "digits" / "labels.txt").read_text().split()
    for row, scores in zip(output_array, plain, strict=True):
        assert len(row) == classes
        parsed = []
        for result in row:
            cls = "".join(chr(x) for x in result).split(":")
            parsed.append((float(cls[0]), int(cls[1]), cls[2]))
        assert [i for _, i, _ in parsed] == list(np.argsort(-scores, kind="stable")[:classes])
        for score, index, label in parsed:
            assert score == pytest.approx(scores[index], abs=1e-6)
            assert label == labels[index]


# ---- simple_http_model_control.py (last: it reloads and unloads 'simple') --------------------


def test_simple_http_model_control(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(url=server.host_port)
    assert len(client.get_model_repository_index()) == 7
    client.load_model("simple")
    assert client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
    assert "failed to load" in caught.value.message()
    client.load_model("simple", config='{"max_batch_size":"16"}')
    assert client.get_model_config("simple")["max_batch_size"] == 16
    client.unload_model("simple")
    assert not client.is_model_ready("simple")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("wrong_model_name")
    assert "failed to load" in caught.value.message()
