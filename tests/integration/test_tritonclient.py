"""tritonclient.http against a real server on the bundled models."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import MANAGEMENT_KEY
from tests.server import RunningServer

AUTH = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}


@pytest.fixture
def client(sample_server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(sample_server.host_port)


def test_health_and_server_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "onnx-serve"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_config_and_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    assert not client.is_model_ready("no-such-model")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert {o["name"] for o in meta["outputs"]} == {"logits", "probabilities"}
    assert client.get_model_metadata("digits", "1")["name"] == "digits"
    config = client.get_model_config("digits")
    assert config["max_batch_size"] > 0
    # The image input's layout is Triton's input format (what image clients read).
    assert config["input"] == [
        {"name": "image", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [1, 8, 8]}
    ]
    with pytest.raises(
        InferenceServerException, match="Request for unknown model: .no-such-model. is not found"
    ):
        client.get_model_metadata("no-such-model")


@pytest.mark.parametrize("binary", [True, False])
def test_held_out_digits_are_recognised(
    client: httpclient.InferenceServerClient,
    held_out_digits: tuple[np.ndarray, np.ndarray],
    binary: bool,
) -> None:
    images, labels = held_out_digits
    predicted = []
    for start in range(0, len(images), 50):
        batch = images[start : start + 50]
        tensor = httpclient.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
        result = client.infer("digits", [tensor], outputs=wanted, request_id=str(start))
        assert result.get_response()["id"] == str(start)
        assert result.as_numpy("logits") is None
        probabilities = result.as_numpy("probabilities")
        assert probabilities is not None
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        predicted.append(probabilities.argmax(axis=1))
    accuracy = float((np.concatenate(predicted) == labels).mean())
    assert len(labels) == 400
    assert accuracy >= 0.95, accuracy


def test_all_outputs_by_default_and_explicit_version(
    client: httpclient.InferenceServerClient,
) -> None:
    x = np.zeros((2, 1, 8, 8), np.float32)
    tensor = httpclient.InferInput("image", [2, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("digits", [tensor], model_version="1")
    logits = result.as_numpy("logits")
    probabilities = result.as_numpy("probabilities")
    assert logits is not None and probabilities is not None
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4)


def test_wrong_dtype_is_refused_by_name(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("image", [1, 1, 8, 8], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float64))
    with pytest.raises(InferenceServerException, match="must be FP32, got float64"):
        client.infer("digits", [tensor])


def test_load_and_unload(client: httpclient.InferenceServerClient) -> None:
    index = client.get_model_repository_index(headers=AUTH)
    digits = {"name": "digits", "version": "1", "state": "READY", "reason": ""}
    # A loaded version also says what it takes in memory.
    assert [e for e in index if digits.items() <= e.items() and e["memory"]["host_bytes"] > 0]
    client.unload_model("digits", headers=AUTH)
    assert not client.is_model_ready("digits")
    client.load_model("digits", headers=AUTH)
    assert client.is_model_ready("digits")
    with pytest.raises(InferenceServerException, match="API key"):
        client.unload_model("digits")


def test_statistics(client: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("image", [3, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((3, 1, 8, 8), np.float32))
    client.infer("digits", [tensor])
    stats = client.get_inference_statistics("digits")["model_stats"]
    assert stats[0]["name"] == "digits"
    assert stats[0]["inference_count"] >= 3
    assert stats[0]["inference_stats"]["success"]["count"] >= 1
    every = client.get_inference_statistics()["model_stats"]
    assert "digits" in {entry["name"] for entry in every}
