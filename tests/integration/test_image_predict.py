"""Image predict end to end: rendered digits and colour pictures through every input form.

The held-out digits of scikit-learn's bundled set are saved the way a person would save them:
8-bit grayscale PNGs, a dark digit on a light background upscaled 4x to 32x32 (nearest), and a
light digit on a dark background upscaled 8x to 64x64 (bicubic, so edges are smooth). The
served digits model must get at least 95% of them right through each form.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_MODELS
from tests.integration.conftest import load_sample_builder
from tests.onnx_models import identity, write_model
from tests.server import RunningServer

BATCH = 50
PNG = {"content-type": "image/png"}
# Pillow resizes in two passes, each rounding to 8 bits: one grey level either way.
TOLERANCE = 1 / 255 + 1e-6
STYLES = ("dark_on_light_32", "light_on_dark_64")
Post = Callable[[httpx.Client, list[bytes]], list[int]]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def render(digit: np.ndarray, style: str) -> bytes:
    """One sklearn digit (8x8, 0..16) as an 8-bit grayscale PNG in ``style``."""
    ink = np.rint(digit * 255 / 16).astype(np.uint8)
    if style == "dark_on_light_32":
        return png(np.kron(255 - ink, np.ones((4, 4), np.uint8)))
    smooth = Image.fromarray(ink).resize((64, 64), Image.Resampling.BICUBIC)
    assert smooth.mode == "L"
    return png(np.asarray(smooth))


@pytest.fixture(scope="module")
def digits() -> tuple[dict[str, list[bytes]], np.ndarray]:
    """Every held-out digit rendered in each style, and the true labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    _, held = load_sample_builder().digits_split(data.target)
    assert len(held) >= 300
    rendered = {style: [render(data.images[i], style) for i in held] for style in STYLES}
    return rendered, data.target[held]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    for name in ("digits", "colors"):
        shutil.copytree(SAMPLE_MODELS / name, root / name)
    colors = (SAMPLE_MODELS / "colors" / "1" / "model.onnx").read_bytes()
    labels = (SAMPLE_MODELS / "colors" / "labels.txt").read_text().split()
    # The defaults inferred for [N,3,224,224] FP32 are stretch, RGB and ImageNet statistics.
    write_model(root, "colors_stretch", colors, labels=labels)
    write_model(root, "colors_bgr", colors, config={"preprocess": {"color": "BGR"}}, labels=labels)
    digits_onnx = (SAMPLE_MODELS / "digits" / "1" / "model.onnx").read_bytes()
    write_model(root, "digits_bare", digits_onnx)  # no config, no labels
    write_model(
        root,
        "grey_echo",
        identity("FP32", ["N", 1, 8, 8]),
        config={"preprocess": {"resample": "box", "invert": "auto"}},
    )
    with RunningServer(root) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        yield http


def top1(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [row[0]["index"] for row in response.json()["predictions"]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post_multipart(http: httpx.Client, images: list[bytes]) -> list[int]:
    found: list[int] = []
    for data in images:
        files = {"file": ("d.png", data, "image/png")}
        found += top1(http.post("/predict", files=files, data={"model": "digits", "top_k": "1"}))
    return found


def post_raw(http: httpx.Client, images: list[bytes]) -> list[int]:
    found: list[int] = []
    for data in images:
        r = http.post("/predict?model=digits&top_k=1", content=data, headers=PNG)
        found += top1(r)
    return found


def post_base64(http: httpx.Client, images: list[bytes]) -> list[int]:
    found: list[int] = []
    for data in images:
        doc = {"model": "digits", "image": b64(data), "top_k": 1}
        found += top1(http.post("/predict", json=doc))
    return found


def post_batch(http: httpx.Client, images: list[bytes]) -> list[int]:
    found: list[int] = []
    for start in range(0, len(images), BATCH):
        chunk = [b64(data) for data in images[start : start + BATCH]]
        found += top1(http.post("/predict", json={"model": "digits", "images": chunk, "top_k": 1}))
    return found


def post_per_model_files(http: httpx.Client, images: list[bytes]) -> list[int]:
    found: list[int] = []
    for start in range(0, len(images), BATCH):
        files = [
            ("file", (f"{i}.png", d, "image/png"))
            for i, d in enumerate(images[start : start + BATCH])
        ]
        found += top1(http.post("/v2/models/digits/predict/image?top_k=1", files=files))
    return found


FORMS: dict[str, Post] = {
    "multipart": post_multipart,
    "raw": post_raw,
    "base64": post_base64,
    "batch_images": post_batch,
    "per_model_multipart_batch": post_per_model_files,
}


@pytest.mark.parametrize("form", FORMS)
def test_held_out_digits_through_every_form(
    client: httpx.Client,
    digits: tuple[dict[str, list[bytes]], np.ndarray],
    form: str,
    record_property: Callable[[str, object], None],
) -> None:
    rendered, labels = digits
    for style in STYLES:
        predicted = np.array(FORMS[form](client, rendered[style]))
        accuracy = float((predicted == labels).mean())
        record_property(f"accuracy_{form}_{style}", accuracy)
        print(f"digits top-1 accuracy, {form}, {style}: {accuracy:.4f} of {len(labels)}")
        assert accuracy >= 0.95, (form, style, accuracy)


def test_answer_shape_labels_and_top_k(client: httpx.Client, digits: Any) -> None:
    rendered, labels = digits
    seven = rendered["dark_on_light_32"][int(np.flatnonzero(labels == 7)[0])]
    r = client.post(
        "/predict", files={"file": ("seven.png", seven, "image/png")}, data={"model": "digits"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("digits", "1")
    (row,) = body["predictions"]
    assert len(row) == 5 and row[0]["label"] == "7" and row[0]["index"] == 7
    assert all(set(e) == {"label", "index", "score"} for e in row)
    scores = [e["score"] for e in row]
    assert scores == sorted(scores, reverse=True) and 0.5 < scores[0] <= 1.0
    r = client.post(
        "/v2/models/digits/versions/1/predict/image?top_k=100&raw=true",
        content=seven,
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"][0]) == 10
    assert set(body["outputs"]) == {"logits", "probabilities"}
    probabilities = np.array(body["outputs"]["probabilities"])
    assert probabilities.shape == (1, 10)
    assert body["predictions"][0][0]["score"] == pytest.approx(probabilities.max(), rel=1e-6)


def test_without_labels_or_config_indices_and_softmaxed_logits(
    client: httpx.Client, digits: Any
) -> None:
    rendered, labels = digits
    # No config: grey 8x8, bilinear, no inversion; a light-on-dark digit fits that polarity.
    image = rendered["light_on_dark_64"][0]
    r = client.post(
        "/predict", json={"model": "digits_bare", "image": b64(image), "top_k": 3, "raw": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    row = body["predictions"][0]
    assert [set(e) for e in row] == [{"index", "score"}] * 3
    logits = np.array(body["outputs"]["logits"], np.float64)[0]
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [e["index"] for e in row] == list(np.argsort(-softmax)[:3])
    assert row[0]["score"] == pytest.approx(softmax.max(), rel=1e-5)


def test_served_preprocessing_matches_a_numpy_reference(client: httpx.Client) -> None:
    """An identity model echoes the tensor the server built from the image."""
    rng = np.random.default_rng(1)
    dark = rng.integers(0, 60, (16, 16), dtype=np.uint8)
    light = 255 - dark
    reference = dark.reshape(8, 2, 8, 2).astype(np.float64).mean(axis=(1, 3)) / 255

    def echo(image: np.ndarray, invert: str | None = None) -> np.ndarray:
        query = "" if invert is None else f"&invert={invert}"
        r = client.post(
            f"/predict?model=grey_echo&raw=true{query}",
            content=png(image),
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
        return np.array(r.json()["outputs"]["output"])[0, 0]

    np.testing.assert_allclose(echo(dark), reference, atol=TOLERANCE)
    np.testing.assert_allclose(echo(light), reference, atol=TOLERANCE)  # auto inverts
    np.testing.assert_allclose(echo(light, "false"), 1 - reference, atol=TOLERANCE)
    np.testing.assert_allclose(echo(dark, "true"), 1 - reference, atol=TOLERANCE)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> Image.Image:
    return Image.new("RGB", size, rgb)


COLOURS = {"red": (230, 20, 25), "green": (20, 200, 30), "blue": (25, 30, 220)}
FORMATS: dict[str, dict[str, Any]] = {
    "JPEG": {"quality": 90},
    "PNG": {},
    "WEBP": {"quality": 90},
    "BMP": {},
    "GIF": {},
    "TIFF": {},
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_rgb_model_in_every_format(client: httpx.Client, fmt: str) -> None:
    names = list(COLOURS)
    images = [b64(encode(solid(COLOURS[n]), fmt, **FORMATS[fmt])) for n in names]
    r = client.post("/predict", json={"model": "colors", "images": images, "top_k": 3})
    assert r.status_code == 200, r.text
    assert [row[0]["label"] for row in r.json()["predictions"]] == names
    assert all(row[0]["score"] > 0.5 for row in r.json()["predictions"])
    for name in names:
        data = encode(solid(COLOURS[name]), fmt, **FORMATS[fmt])
        r = client.post(
            "/predict?model=colors", content=data, headers={"content-type": Image.MIME[fmt]}
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0][0]["label"] == name


def test_bgr_config_swaps_red_and_blue(client: httpx.Client) -> None:
    red = encode(solid(COLOURS["red"]), "PNG")
    r = client.post(
        "/v2/models/colors_bgr/predict/image", files={"file": ("red.png", red, "image/png")}
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0][0]["label"] == "blue"


def test_centre_crop_and_stretch_see_different_pictures(client: httpx.Client) -> None:
    """A wide picture, red in the middle fifth and blue on both sides."""
    picture = Image.new("RGB", (500, 100), COLOURS["blue"])
    picture.paste(COLOURS["red"], (200, 0, 300, 100))
    data = encode(picture, "PNG")
    labels = {}
    for model in ("colors", "colors_stretch"):
        r = client.post(
            f"/v2/models/{model}/predict/image?top_k=1",
            content=data,
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
        labels[model] = r.json()["predictions"][0][0]["label"]
    assert labels == {"colors": "red", "colors_stretch": "blue"}


def test_exif_orientation_through_the_server(client: httpx.Client) -> None:
    """Stored sideways with EXIF orientation 6, a picture must be seen upright."""
    rng = np.random.default_rng(2)
    upright = rng.integers(0, 256, (16, 8), dtype=np.uint8)
    stored = Image.fromarray(np.rot90(upright, 1))  # what rotating 90 degrees clockwise undoes
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "PNG", exif=exif)
    r = client.post("/predict?model=grey_echo&raw=true&invert=false", content=data, headers=PNG)
    assert r.status_code == 200, r.text
    echoed = np.array(r.json()["outputs"]["output"])[0, 0]
    reference = upright.reshape(8, 2, 8, 1).astype(np.float64).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(echoed, reference, atol=TOLERANCE)


def test_metadata_shows_the_effective_preprocessing(client: httpx.Client) -> None:
    digits = client.get("/v2/models/digits").json()
    assert digits["preprocess"]["invert"] == "auto"
    assert digits["preprocess"]["size"] == [8, 8]
    assert digits["postprocess"] == {"output": "probabilities", "softmax": False, "top_k": 5}
    inferred = client.get("/v2/models/colors_stretch").json()["preprocess"]
    assert inferred["mean"] == [0.485, 0.456, 0.406] and inferred["resize"] == "stretch"
    assert inferred["layout"] == "NCHW" and inferred["color"] == "RGB"


def test_openapi_documents_every_form(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    content = predict["requestBody"]["content"]
    for media_type in (
        "application/json",
        "multipart/form-data",
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/bmp",
        "image/gif",
        "image/tiff",
    ):
        assert media_type in content
    assert content["application/json"]["schema"]["$ref"].endswith("/PredictJsonRequest")
    components = schema["components"]["schemas"]
    assert len(components["PredictJsonRequest"]["examples"]) == 3
    assert "image" in components["ImageJsonRequest"]["properties"]
    assert {p["name"] for p in predict["parameters"]} == {
        "model",
        "version",
        "top_k",
        "raw",
        "invert",
    }
    per_model = schema["paths"]["/v2/models/{model_name}/predict/image"]["post"]
    assert "multipart/form-data" in per_model["requestBody"]["content"]
    assert json.dumps(per_model).count("predictions") >= 1


def test_readme_example_is_the_real_answer(client: httpx.Client) -> None:
    readme = (SAMPLE_MODELS.parent / "README.md").read_text()
    section = readme.split("## Images", 1)[1].split("\n## ", 1)[0]
    assert "curl -s -F file=@seven.png -F model=digits localhost:8000/predict" in section
    shown = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    seven = (SAMPLE_MODELS.parent / "docs" / "seven.png").read_bytes()
    r = client.post("/predict", files={"file": ("seven.png", seven)}, data={"model": "digits"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["predictions"][0][0]["label"] == "7"
    strip = [[(e["label"], e["index"]) for e in row] for row in got["predictions"]]
    assert strip == [[(e["label"], e["index"]) for e in row] for row in shown["predictions"]]
    scores = [e["score"] for e in got["predictions"][0]]
    assert scores == pytest.approx([e["score"] for e in shown["predictions"][0]], rel=1e-4)
