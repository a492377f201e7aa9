"""Request bodies for each payload kind, and checks that the server answers them right."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import orjson
from PIL import Image

from bench.grpc_load import GRPC_HEADERS, INFER_PATH, frame
from bench.load import Request
from bench.models import MLP_WIDTH, RESNET_SHAPE

HEADER = "Inference-Header-Content-Length"
BOUNDARY = "bench-boundary-7d1f0c"


def resnet_input(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(5).random((batch, *RESNET_SHAPE), dtype=np.float32)


def mlp_input(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(6).standard_normal((batch, MLP_WIDTH)).astype(np.float32)


def v2_json(model: str, name: str, x: np.ndarray) -> Request:
    doc = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel()}]
    }
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return Request(f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})


def v2_binary(model: str, name: str, x: np.ndarray, output: str) -> Request:
    raw = x.astype("<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    headers = {"Content-Type": "application/octet-stream", HEADER: str(len(header))}
    return Request(f"/v2/models/{model}/infer", header + raw, headers)


def grpc_infer(model: str, name: str, x: np.ndarray, output: str) -> Request:
    """A gRPC ModelInfer with raw tensors, as tritonclient.grpc sends it."""
    from tritonclient.grpc import service_pb2

    message = service_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    message.outputs.add(name=output)
    message.raw_input_contents.append(x.astype("<f4").tobytes())
    return Request(INFER_PATH, frame(message.SerializeToString()), GRPC_HEADERS, grpc=True)


def grpc_answer(address: str, request: Request) -> bytes:
    """The serialised answer to a gRPC ``request`` (its body without the frame header)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(request.path)
        answer: bytes = call(request.body[5:], timeout=120)
    return answer


def grpc_outputs(answer: bytes) -> dict[str, np.ndarray]:
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(answer)
    return {
        o.name: np.frombuffer(raw, "<f4").reshape(o.shape)
        for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def predict_json(model: str, name: str, x: np.ndarray) -> Request:
    body = orjson.dumps({"model": model, "inputs": {name: x}}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Request("/predict", body, {"Content-Type": "application/json"})


def v1_json(model: str, x: np.ndarray) -> Request:
    body = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Request(f"/v1/models/{model}:predict", body, {"Content-Type": "application/json"})


def png_photo(size: tuple[int, int] = (320, 256)) -> bytes:
    """A photo-like PNG (smooth shapes and mild noise), about as large as a real one."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(9)
    channels = [
        128
        + 100 * np.sin(xx / (17 + 9 * c) + c) * np.cos(yy / (23 + 5 * c))
        + rng.normal(0, 6, (height, width))
        for c in range(3)
    ]
    pixels = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def predict_image(model: str, png: bytes) -> Request:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n',
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="photo.png"\r\nContent-Type: image/png\r\n\r\n',
    ]
    body = "".join(parts).encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return Request("/predict", body, headers)


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    """The named outputs of any answer shape this benchmark uses."""
    if HEADER in response.headers:
        length = int(response.headers[HEADER])
        doc: dict[str, Any] = orjson.loads(response.content[:length])
        offset = length
        out: dict[str, np.ndarray] = {}
        for o in doc["outputs"]:
            size = o["parameters"]["binary_data_size"]
            data = response.content[offset : offset + size]
            out[o["name"]] = np.frombuffer(data, "<f4").reshape(o["shape"])
            offset += size
        return out
    doc = orjson.loads(response.content)
    if "predictions" in doc and isinstance(doc["predictions"], list):
        if doc["predictions"] and isinstance(doc["predictions"][0], list):
            if doc["predictions"][0] and isinstance(doc["predictions"][0][0], dict):
                return {"top": np.array([p["index"] for p in doc["predictions"][0]])}
        return {"y": np.array(doc["predictions"], np.float32)}
    if isinstance(doc.get("outputs"), dict):
        return {k: np.array(v, np.float32) for k, v in doc["outputs"].items()}
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in doc["outputs"]}


def check_grpc(address: str, request: Request, expected: np.ndarray | None) -> str | None:
    """Send a gRPC ``request`` once: None when it is answered right, else what went wrong."""
    import grpc

    try:
        outputs = grpc_outputs(grpc_answer(address, request))
    except grpc.RpcError as exc:
        return f"gRPC {exc}"
    return _compare(outputs, expected)


def _compare(outputs: dict[str, np.ndarray], expected: np.ndarray | None) -> str | None:
    if expected is None:
        return None
    got = next(iter(outputs.values()))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-5):
        return f"wrong answer: {got.ravel()[:4]} != {expected.ravel()[:4]}"
    return None


def check(base_url: str, request: Request, expected: np.ndarray | None) -> str | None:
    """Send ``request`` once: None when it is answered right, else what went wrong."""
    try:
        response = httpx.post(
            base_url + request.path, content=request.body, headers=request.headers, timeout=120
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    return _compare(outputs_of(response), expected)
