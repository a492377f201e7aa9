"""POST /predict and KServe v1 against a real server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.onnx_models import add_mul, identity, write_model
from tests.server import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "add_mul", add_mul(width=2))
    write_model(root, "text", identity("BYTES", ["N", 2]))
    write_model(root, "fixed", identity("FP32", [2, 2]))
    with RunningServer(root) as running:
        yield running


def post(server: RunningServer, path: str, body: object) -> httpx.Response:
    return httpx.post(server.url + path, json=body)


def test_predict_named_inputs(server: RunningServer) -> None:
    r = post(server, "/predict", {"model": "add_mul", "inputs": {"a": [[1, 2]], "b": [[3, 4]]}})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "add_mul",
        "version": "1",
        "outputs": {"sum": [[4.0, 6.0]], "product": [[3.0, 8.0]]},
    }


def test_predict_single_example_without_batch_dimension(server: RunningServer) -> None:
    r = post(server, "/predict", {"model": "add_mul", "inputs": {"a": [1, 2], "b": [3, 4]}})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["sum"] == [4.0, 6.0]


def test_predict_bare_list_for_one_input_model(server: RunningServer) -> None:
    r = post(server, "/predict", {"model": "text", "version": "1", "inputs": [["a", "b"]]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == {"output": [["a", "b"]]}
    r = post(server, "/predict", {"model": "add_mul", "inputs": [[1, 2]]})
    assert r.status_code == 400
    assert "name them" in r.json()["error"]


def test_predict_digits_sample(
    sample_server: RunningServer, held_out_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_out_digits
    r = post(sample_server, "/predict", {"model": "digits", "inputs": images[:20].tolist()})
    assert r.status_code == 200, r.text
    predicted = np.argmax(r.json()["outputs"]["probabilities"], axis=1)
    assert (predicted == labels[:20]).mean() >= 0.9


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [[1, 2]]}, "'model'"),
        ({"model": "add_mul"}, "'inputs'"),
        ({"model": "add_mul", "inputs": {"a": [[1, 2]], "c": [[1, 2]]}}, "no input 'c'"),
        ({"model": "add_mul", "inputs": {"a": [["x", 2]], "b": [[1, 2]]}}, "expected float32"),
        ({"model": "add_mul", "inputs": {"a": [[1, 2, 3]], "b": [[1, 2, 3]]}}, "shape"),
    ],
)
def test_predict_errors(server: RunningServer, body: object, message: str) -> None:
    r = post(server, "/predict", body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_predict_unknown_model_is_404(server: RunningServer) -> None:
    r = post(server, "/predict", {"model": "nope", "inputs": [[1]]})
    assert r.status_code == 404, r.text
    assert "nope" in r.json()["error"]


def test_v1_status_and_predict(server: RunningServer) -> None:
    r = httpx.get(server.url + "/v1/models/add_mul")
    assert r.json() == {"name": "add_mul", "ready": True}
    r = post(server, "/v1/models/add_mul:predict", {"instances": [{"a": [1, 2], "b": [1, 1]}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [{"sum": [2.0, 3.0], "product": [1.0, 2.0]}]}
    r = post(server, "/v1/models/text:predict", {"instances": [["a", "b"], ["c", "d"]]})
    assert r.json() == {"predictions": [["a", "b"], ["c", "d"]]}


def test_v1_model_without_batch_dimension_takes_one_instance(server: RunningServer) -> None:
    r = post(server, "/v1/models/fixed:predict", {"instances": [[[1, 2], [3, 4]]]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[[1.0, 2.0], [3.0, 4.0]]]}
    r = post(server, "/v1/models/fixed:predict", {"instances": [[[1, 2], [3, 4]]] * 2})
    assert r.status_code == 400
    assert "one instance" in r.json()["error"]


def test_v1_errors(server: RunningServer) -> None:
    assert post(server, "/v1/models/add_mul:predict", {"rows": []}).status_code == 400
    assert post(server, "/v1/models/nope:predict", {"instances": [[1]]}).status_code == 404
    assert httpx.get(server.url + "/v1/models/nope").status_code == 404


def test_openapi_documents_the_routes(server: RunningServer) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    paths = schema["paths"]
    for path in ("/predict", "/v2/models/{model_name}/infer", "/v1/models/{model_name}:predict"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]
        assert "example" in body
        ref = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert ref in schema["components"]["schemas"]
