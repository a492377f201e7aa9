"""Bad image requests get the right 4xx with a message that says which, and serving goes on."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_MODELS
from tests.onnx_models import add_mul, identity, write_model
from tests.server import RunningServer

MAX_BYTES = 256 * 1024
MAX_PIXELS = 1_000_000


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 9))


RNG = np.random.default_rng(0)
GOOD = encode(RNG.integers(0, 256, (32, 32), dtype=np.uint8))
NOISE_PNG = encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
NOISE_JPEG = encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
ICO = encode(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8), "ICO")
TOO_MANY_PIXELS = encode(np.zeros((1000, 2000), np.uint8))
TOO_MANY_BYTES = RNG.integers(0, 256, MAX_BYTES + 10, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    write_model(root, "add_mul", add_mul(width=4))
    write_model(root, "grey_echo", identity("FP32", ["N", 1, 8, 8]))
    write_model(root, "one_image", identity("FP32", [1, 1, 8, 8]))
    env = {
        "ONNX_SERVE_MAX_REQUEST_BYTES": str(MAX_BYTES),
        "ONNX_SERVE_MAX_IMAGE_PIXELS": str(MAX_PIXELS),
    }
    with RunningServer(root, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


def raw(
    client: httpx.Client, data: bytes, query: str = "model=digits", kind: str = "image/png"
) -> httpx.Response:
    return client.post(f"/predict?{query}", content=data, headers={"content-type": kind})


def form(client: httpx.Client, data: bytes, fields: dict[str, str] | None = None) -> httpx.Response:
    files = {"file": ("x.png", data, "image/png")}
    return client.post("/predict", files=files, data=fields or {"model": "digits"})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_json(client: httpx.Client, doc: dict[str, Any]) -> httpx.Response:
    return client.post("/predict", json=doc)


def check(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error, error


@pytest.mark.parametrize(
    "send",
    [
        lambda c, d: raw(c, d),
        lambda c, d: form(c, d),
        lambda c, d: as_json(c, {"model": "digits", "image": b64(d)}),
    ],
    ids=["raw", "multipart", "base64"],
)
def test_bad_bytes_in_every_form(client: httpx.Client, send: Any) -> None:
    check(send(client, b"this is not an image"), 400, "image is not an image (PNG, JPEG")
    check(send(client, NOISE_PNG[: len(NOISE_PNG) // 2]), 400, "image is truncated or corrupt")
    check(send(client, NOISE_JPEG[: len(NOISE_JPEG) // 2]), 400, "image is truncated or corrupt")
    check(send(client, ICO), 415, "image is ICO, which is not supported")
    check(send(client, png_header(100_000, 100_000)), 413, "over the limit")
    check(
        send(client, TOO_MANY_PIXELS),
        413,
        f"2000x1000 = 2000000 pixels, over the limit of {MAX_PIXELS}",
    )
    check(send(client, TOO_MANY_BYTES), 413, f"over the limit of {MAX_BYTES}")


def test_unsupported_content_type_is_415_before_reading(client: httpx.Client) -> None:
    check(raw(client, b"<svg/>", kind="image/svg+xml"), 415, "Content-Type image/svg+xml is not")
    check(raw(client, GOOD, kind="image/avif"), 415, "image/avif")


def test_the_bytes_decide_the_format_not_the_content_type(client: httpx.Client) -> None:
    jpeg = encode(np.full((16, 16), 200, np.uint8), "JPEG")
    assert raw(client, jpeg, kind="image/png").status_code == 200


def test_one_bad_image_in_a_batch_is_named(client: httpx.Client) -> None:
    doc = {"model": "digits", "images": [b64(GOOD), b64(b"nope"), b64(GOOD)]}
    check(as_json(client, doc), 400, "images[1] is not an image")


def test_models_that_cannot_answer_images(client: httpx.Client) -> None:
    check(
        raw(client, GOOD, "model=add_mul"),
        400,
        "model 'add_mul' has no image-like input (inputs: a [-1, 4] FP32, b [-1, 4] FP32)",
    )
    check(
        raw(client, GOOD, "model=grey_echo"),
        400,
        "no class-score output [batch, classes] (outputs: output [-1, 1, 8, 8]); ask for raw=true",
    )
    assert raw(client, GOOD, "model=grey_echo&raw=true").status_code == 200
    many = {"model": "one_image", "images": [b64(GOOD)] * 2, "raw": True}
    check(as_json(client, many), 400, "takes exactly 1 image(s) per request, got 2")
    assert as_json(client, {**many, "images": [b64(GOOD)]}).status_code == 200


@pytest.mark.parametrize(
    ("doc", "status", "message"),
    [
        ({"model": "digits", "image": "not base64!"}, 400, "image is not valid base64"),
        ({"model": "digits", "image": 3}, 400, "'image' must be a base64 string"),
        ({"model": "digits", "images": [1]}, 400, "'images' must be a list of base64 strings"),
        ({"model": "digits", "images": []}, 400, "no image in the request"),
        ({"model": "digits", "image": "", "images": []}, 400, "either 'image' or 'images'"),
        ({"model": "digits", "image": b64(GOOD), "topk": 3}, 400, "unknown JSON field(s) topk"),
        ({"model": "digits", "image": b64(GOOD), "top_k": 0}, 400, "'top_k' must be an integer"),
        ({"model": "digits", "image": b64(GOOD), "top_k": "x"}, 400, "'top_k' must be an integer"),
        (
            {"model": "digits", "image": b64(GOOD), "raw": "maybe"},
            400,
            "'raw' must be true or false",
        ),
        (
            {"model": "digits", "image": b64(GOOD), "invert": 2},
            400,
            "'invert' must be true, false or auto",
        ),
        ({"image": b64(GOOD)}, 400, "'model' must name the model"),
        (
            {"model": "nope", "image": b64(GOOD)},
            404,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            {"model": "digits", "images": [b64(GOOD)] * 65},
            400,
            "65 images is over the model's max_batch_size 64",
        ),
    ],
)
def test_bad_json_requests(
    client: httpx.Client, doc: dict[str, Any], status: int, message: str
) -> None:
    check(as_json(client, doc), status, message)


def test_bad_forms_and_queries(client: httpx.Client) -> None:
    check(
        client.post("/predict", files={"other": ("x.png", GOOD)}, data={"model": "digits"}),
        400,
        "unexpected file part 'other'",
    )
    check(
        client.post("/predict", data={"model": "digits", "file": "text"}, files={"x": ("x", b"")}),
        400,
        "'file' must be a file part",
    )
    check(
        form(client, GOOD, {"model": "digits", "colour": "red"}),
        400,
        "unknown form field(s) colour",
    )
    check(raw(client, GOOD, "model=digits&k=3"), 400, "unknown query field(s) k")
    check(raw(client, GOOD, "model=digits&top_k=-1"), 400, "'top_k' must be an integer")
    check(raw(client, GOOD, ""), 400, "'model' must name the model")
    broken = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nabc'
    multipart = {"content-type": "multipart/form-data; boundary=b"}
    check(client.post("/predict", content=broken, headers=multipart), 400, "no 'file' part")
    check(client.post("/predict", content=b"", headers=multipart), 400, "no 'file' part")
    no_boundary = {"content-type": "multipart/form-data"}
    check(client.post("/predict", content=b"x", headers=no_boundary), 400, "invalid multipart")


def test_per_model_route_errors(client: httpx.Client) -> None:
    path = "/v2/models/digits/predict/image"
    r = client.post(path, files={"file": ("x.png", GOOD)}, data={"model": "other"})
    check(r, 400, "names model 'other' but the path 'digits'")
    check(client.post(path, json={"inputs": [[0.0]]}), 400, "send 'image' or 'images'")
    check(
        client.post("/v2/models/nope/predict/image", json={"image": b64(GOOD)}),
        404,
        "Request for unknown model: 'nope'",
    )
    check(
        client.post("/v2/models/digits/versions/9/predict/image", json={"image": b64(GOOD)}),
        404,
        "version 9",
    )


def test_the_server_keeps_serving_and_counts_the_failures(client: httpx.Client) -> None:
    for _ in range(3):
        check(raw(client, b"garbage"), 400, "not an image")
    r = raw(client, GOOD)
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]) == 5
    assert client.get("/v2/health/ready").status_code == 200
    metrics = client.get("/metrics").text
    wanted = ("onnx_serve_request_failure_total{", 'model="digits"', 'reason="invalid_image"')
    line = next(row for row in metrics.splitlines() if all(w in row for w in wanted))
    assert float(line.rsplit(" ", 1)[1]) >= 3
