"""What a JSON body, or the outputs it asks for, may cost a live server.

Bodies of nested one-element lists cost ~35 bytes a byte once parsed and seconds of the
event loop; a body that asks for one output many times multiplied the response. Each attack
here runs against a real server while a probe asks for liveness: the server's memory (RSS
peak) and the worst liveness answer are checked against generous bounds (the attacks as
first reported cost +1.1 GB and stalls of 4.5 s and more).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.attacks import MIB, LivenessProbe, peak_rss, reset_peak, rss
from tests.onnx_models import identity, mlp, write_model
from tests.server import RunningServer

MAX_RESPONSE_BYTES = 2 * MIB
# Liveness must answer within this while an attack runs (the event loop stays free).
LIVENESS_BOUND = 3.0
ATTACK_BYTES = 20 * MIB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    # Batches as large as the bodies here carry.
    write_model(root, "mlp", mlp(), config={"max_batch_size": 10_000_000})
    write_model(root, "identity", identity(shape=["N", 4]), config={"max_batch_size": 10_000_000})
    env = {"ONNX_SERVE_MAX_RESPONSE_BYTES": str(MAX_RESPONSE_BYTES)}
    with RunningServer(root, env=env) as running:
        yield running


def nested_ones(size: int) -> bytes:
    """``[[[[[[0]]]]]],`` repeated: the reported body, ~35 bytes of Python objects a byte."""
    unit = b"[[[[[[0]]]]]],"
    return (unit * (size // len(unit)))[:-1]


def reference(x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    return np.asarray(y)


@pytest.mark.parametrize(
    ("path", "prefix", "suffix"),
    [
        ("/v2/models/identity/infer",
         b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [', b"]}]}"),
        ("/predict", b'{"model": "identity", "inputs": [', b"]}"),
        ("/v1/models/identity:predict", b'{"instances": [', b"]}"),
    ],
)  # fmt: skip
def test_nested_lists_are_refused_before_they_cost(
    server: RunningServer, path: str, prefix: bytes, suffix: bytes
) -> None:
    body = prefix + nested_ones(ATTACK_BYTES) + suffix
    reset_peak(server)
    before = rss(server)
    with LivenessProbe(server) as probe, httpx.Client(timeout=120) as client:
        r = client.post(server.url + path, content=body)
        assert r.status_code == 400, r.text
        assert "max_json_containers" in r.json()["error"]
    assert not probe.failures, probe.failures
    assert probe.worst < LIVENESS_BOUND, probe.worst
    # The body itself is held while it is read (20 MiB); nothing of its parse.
    assert peak_rss(server) - before < 160 * MIB, (before, peak_rss(server))


def test_a_large_flat_body_is_decoded_off_the_event_loop(server: RunningServer) -> None:
    # 60 MiB of numbers (15 million floats, under every limit): parsed on the event loop this
    # held it for seconds and took 32 bytes a number; in the worker process the server only
    # holds the body and the arrays (this one is refused once run: its JSON answer would pass
    # the response limit).
    rows = 15 * 1024 * 1024 // 4
    body = (
        b'{"inputs": [{"name": "input", "shape": [%d, 4], "datatype": "FP32", "data": [' % rows
        + b"0.5," * (rows * 4 - 1)
        + b"0.5]}]}"
    )
    reset_peak(server)
    before = rss(server)
    with LivenessProbe(server) as probe:
        r = httpx.post(server.url + "/v2/models/identity/infer", content=body, timeout=300)
    assert r.status_code == 400, r.text
    assert "max_response_bytes" in r.json()["error"]
    assert not probe.failures, probe.failures
    assert probe.worst < 2.0, probe.worst
    assert probe.answers >= 2
    # The body (60 MiB), the input and output arrays (60 MiB each): not 32 bytes a number.
    assert peak_rss(server) - before < 320 * MIB, (before, peak_rss(server))


def test_large_json_tensors_decode_to_the_right_answers(server: RunningServer) -> None:
    # ~3 MB bodies: over the size decoded in a worker, under the response limit.
    x = np.random.default_rng(3).standard_normal((20_000, 16)).astype(np.float32)
    want = reference(x)
    v2 = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json={"inputs": [{"name": "x", "shape": [20_000, 16], "datatype": "FP32",
                          "data": x.ravel().tolist()}]},
        timeout=60,
    )  # fmt: skip
    assert v2.status_code == 200, v2.text
    out = v2.json()["outputs"][0]
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), want, rtol=1e-5)
    predict = httpx.post(
        server.url + "/predict", json={"model": "mlp", "inputs": {"x": x.tolist()}}, timeout=60
    )
    assert predict.status_code == 200, predict.text
    np.testing.assert_allclose(predict.json()["outputs"]["y"], want, rtol=1e-5)
    v1 = httpx.post(
        server.url + "/v1/models/mlp:predict", json={"instances": x.tolist()}, timeout=60
    )
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(v1.json()["predictions"], want, rtol=1e-5)


# ---- outputs asked for many times, and responses too large -----------------------------------


def test_an_output_asked_for_twice_is_refused(server: RunningServer) -> None:
    x = [0.5] * 16
    outputs = [{"name": "y"}] * 150_000  # the reported 4 MB request for a 1 GB response
    reset_peak(server)
    before = rss(server)
    r = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json={"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": x}],
              "outputs": outputs},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 400, r.text
    assert "output 'y' is requested more than once" in r.json()["error"]
    assert peak_rss(server) - before < 64 * MIB
    client = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.full((1, 16), 0.5, np.float32))
    twice = [grpcclient.InferRequestedOutput("y"), grpcclient.InferRequestedOutput("y")]
    with pytest.raises(InferenceServerException, match="more than once") as refused:
        client.infer("mlp", [tensor], outputs=twice)
    assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)


def test_responses_over_the_limit_are_refused_before_encoding(server: RunningServer) -> None:
    # 40,000 rows of 4 floats: 640 kB raw, over 2 MiB as JSON text.
    rows = 40_000
    x = np.random.default_rng(1).standard_normal((rows, 16)).astype(np.float32)
    doc = {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": "FP32",
                       "data": x.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(server.url + "/v2/models/mlp/infer", json=doc, timeout=60)
    assert r.status_code == 400, r.text
    assert "max_response_bytes" in r.json()["error"]
    # The same outputs as binary fit.
    binary = httpx.post(
        server.url + "/v2/models/mlp/infer",
        json={**doc, "parameters": {"binary_data_output": True}},
        timeout=60,
    )
    assert binary.status_code == 200, binary.text
    # gRPC: the same bound (its responses are binary; 3 MiB of identity output is over it).
    client = grpcclient.InferenceServerClient(server.grpc_address)
    big = grpcclient.InferInput("input", [200_000, 4], "FP32")
    big.set_data_from_numpy(np.zeros((200_000, 4), np.float32))
    with pytest.raises(InferenceServerException, match="max_response_bytes") as refused:
        client.infer("identity", [big])
    assert refused.value.status() == str(grpc.StatusCode.RESOURCE_EXHAUSTED)
