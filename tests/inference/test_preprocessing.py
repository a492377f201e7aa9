"""Image decoding and preprocessing, each option checked against a numpy reference."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from app.inference.image_plan import ImagePlan
from app.inference.preprocessing import decode_image, light_border, preprocess, to_tensor

RNG = np.random.default_rng(0)
BASE = ImagePlan(
    input="x",
    color="RGB",
    height=8,
    width=8,
    resize="stretch",
    resample="box",
    crop_fraction=1.0,
    layout="NHWC",
    dtype="uint8",
    scale=1.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    invert=False,
    fixed_batch=None,
)
GREY = dataclasses.replace(BASE, color="L", mean=(0.0,), std=(1.0,))
LIMIT = 10_000_000


def plan(base: ImagePlan = BASE, **changes: Any) -> ImagePlan:
    return dataclasses.replace(base, **changes)


def encode(pixels: np.ndarray | Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def random_rgb(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Reference box downsampling by an integer factor: the mean of each block."""
    h, w, c = pixels.shape
    blocks = pixels.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64)
    return np.asarray(blocks.mean(axis=(1, 3)))


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels (its data is one row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---- numpy stage: every option against a reference ----------------------------------------------


def reference_tensor(pixels: np.ndarray, p: ImagePlan, flip: np.ndarray) -> np.ndarray:
    """The preprocessing formula written out plainly, in float64."""
    x = pixels.astype(np.float64)
    for i in range(len(x)):
        if flip[i]:
            x[i] = 255.0 - x[i]
    if p.color == "BGR":
        x = x[..., [2, 1, 0]]
    y = (x * p.scale - np.array(p.mean)) / np.array(p.std)
    dtype = np.dtype(p.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    y = y.astype(dtype)
    return np.moveaxis(y, -1, 1) if p.layout == "NCHW" else y


def reference_light_border(pixels: np.ndarray) -> np.ndarray:
    out = []
    for image in pixels.astype(np.float64).mean(axis=3):
        h, w = image.shape
        ring = [
            image[y, x] for y in range(h) for x in range(w) if y in (0, h - 1) or x in (0, w - 1)
        ]
        out.append(np.median(ring) > 127.5)
    return np.array(out)


OPTIONS = [
    {},
    {"color": "BGR"},
    {"layout": "NCHW"},
    {"dtype": "float32", "scale": 1 / 255},
    {
        "dtype": "float32",
        "scale": 1 / 255,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    },
    {"dtype": "float16", "scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
    {"dtype": "float64", "scale": 2.0, "mean": (10.0, 20.0, 30.0), "std": (2.0, 3.0, 4.0)},
    {"dtype": "uint8", "scale": 0.5},
    {"dtype": "int8", "mean": (128.0, 128.0, 128.0)},
    {"dtype": "int8", "scale": 1.0},
    {"invert": True},
    {"invert": "auto", "dtype": "float32", "scale": 1 / 255, "layout": "NCHW"},
    {"color": "BGR", "layout": "NCHW", "dtype": "float32", "scale": 1 / 255, "invert": True},
]


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "identity"
)
def test_to_tensor_matches_the_reference(options: dict[str, Any]) -> None:
    p = plan(**options)
    pixels = random_rgb(4 * 5, 6).reshape(4, 5, 6, 3)
    pixels[1] = 255 - pixels[1] // 8  # a light image, for "auto"
    pixels[2] = pixels[2] // 8  # a dark one
    if p.invert == "auto":
        flip = reference_light_border(pixels)
        assert flip.tolist() == light_border(pixels).tolist()
        assert flip[1] and not flip[2]
    else:
        flip = np.full(len(pixels), bool(p.invert))
    got = to_tensor(pixels, p)
    want = reference_tensor(pixels, p, flip)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.flags["C_CONTIGUOUS"]
    tolerance = 1e-2 if p.dtype == "float16" else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), atol=tolerance)


def test_grayscale_single_channel() -> None:
    pixels = RNG.integers(0, 256, (2, 3, 4, 1), dtype=np.uint8)
    p = plan(GREY, dtype="float32", scale=1 / 255, layout="NCHW", invert=True)
    want = reference_tensor(pixels, p, np.array([True, True]))
    np.testing.assert_allclose(to_tensor(pixels, p), want, atol=1e-6)
    assert to_tensor(pixels, p).shape == (2, 1, 3, 4)


@pytest.mark.parametrize("invert", [True, False, "auto"])
def test_a_request_may_override_the_inversion(invert: bool | str) -> None:
    pixels = np.full((1, 4, 4, 1), 250, np.uint8)
    got = to_tensor(pixels, plan(GREY, invert=not invert), invert)  # type: ignore[arg-type]
    assert int(got[0, 0, 0, 0]) == (250 if invert is False else 5)


# ---- decode: resize, crop, colour, orientation --------------------------------------------------


def test_stretch_box_is_a_block_mean() -> None:
    pixels = random_rgb(32, 64)
    got = decode_image(encode(pixels), plan(height=8, width=16), LIMIT)
    np.testing.assert_allclose(got, block_mean(pixels, 4), atol=1)


def test_shorter_side_crop_takes_the_centre() -> None:
    pixels = random_rgb(32, 64)
    got = decode_image(encode(pixels), plan(height=16, width=16, resize="shorter_side_crop"), LIMIT)
    np.testing.assert_allclose(got, block_mean(pixels[:, 16:48], 2), atol=1)


def test_crop_fraction_crops_inside_the_resized_shorter_side() -> None:
    pixels = random_rgb(32, 64)
    p = plan(height=8, width=8, resize="shorter_side_crop", crop_fraction=0.5)
    got = decode_image(encode(pixels), p, LIMIT)
    np.testing.assert_allclose(got, block_mean(pixels[8:24, 24:40], 2), atol=1)


def test_nearest_upscale_repeats_pixels() -> None:
    pixels = random_rgb(4, 4)
    got = decode_image(encode(pixels), plan(resample="nearest"), LIMIT)
    np.testing.assert_array_equal(got, pixels.repeat(2, axis=0).repeat(2, axis=1))


@pytest.mark.parametrize("resample", ["nearest", "box", "bilinear", "bicubic", "lanczos"])
def test_every_filter_keeps_a_flat_image_flat(resample: str) -> None:
    pixels = np.full((30, 50, 3), (10, 120, 250), np.uint8)
    got = decode_image(encode(pixels), plan(resample=resample, height=7, width=9), LIMIT)
    assert got.shape == (7, 9, 3)
    np.testing.assert_array_equal(got, np.broadcast_to([10, 120, 250], (7, 9, 3)))


def test_rgb_to_grey_uses_luma_weights() -> None:
    pixels = random_rgb(8, 8)
    got = decode_image(encode(pixels), GREY, LIMIT)
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(got[..., 0], luma, atol=1)


def test_grey_to_rgb_repeats_the_channel() -> None:
    grey = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    got = decode_image(encode(grey), BASE, LIMIT)
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize(("orientation", "turn"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation: int, turn: int) -> None:
    pixels = random_rgb(2, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright = np.rot90(pixels, turn)
    p = plan(height=upright.shape[0], width=upright.shape[1])
    got = decode_image(encode(pixels, "PNG", exif=exif), p, LIMIT)
    np.testing.assert_array_equal(got, upright)


def test_large_jpeg_decoded_at_reduced_scale_matches_full_decode() -> None:
    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([x * 255 // 800, y * 255 // 600, (x + y) * 255 // 1400], axis=2)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(pixels.astype(np.uint8), "JPEG", quality=95, exif=exif)
    p = plan(height=16, width=12, resample="bilinear")
    got = decode_image(data, p, LIMIT).astype(np.float64)
    with Image.open(io.BytesIO(data)) as full:
        upright = full.transpose(Image.Transpose.ROTATE_270)
        want = np.asarray(upright.resize((12, 16), Image.Resampling.BILINEAR), np.float64)
    assert np.abs(got - want).mean() < 2.0


# ---- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("JPEG", {"quality": 95, "subsampling": 0}, 4),
        ("WEBP", {"quality": 95}, 8),
    ],
)
def test_formats_decode_to_their_pixels(fmt: str, params: dict[str, Any], tolerance: int) -> None:
    y, x = np.mgrid[0:8, 0:8]
    pixels = np.stack([x * 32, y * 32, np.full_like(x, 128)], axis=2).astype(np.uint8)
    got = decode_image(encode(pixels, fmt, **params), BASE, LIMIT)
    error = np.abs(got.astype(int) - pixels.astype(int))
    assert (error.max() if tolerance == 0 else error.mean()) <= tolerance, error.mean()


def test_gif_uses_the_first_frame() -> None:
    first = np.full((8, 8), 30, np.uint8)
    second = np.full((8, 8), 220, np.uint8)
    data = encode(
        Image.fromarray(first), "GIF", save_all=True, append_images=[Image.fromarray(second)]
    )
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_array_equal(decode_image(data, GREY, LIMIT)[..., 0], first)


def test_sixteen_bit_grey_is_scaled_to_eight_bits() -> None:
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    got = decode_image(encode(Image.fromarray(deep)), GREY, LIMIT)[..., 0]
    np.testing.assert_allclose(got, np.rint(deep / 257), atol=1)


def test_transparency_is_composited_over_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4] = (200, 10, 10, 255)  # opaque red on top, fully transparent black below
    got = decode_image(encode(rgba), BASE, LIMIT)
    np.testing.assert_array_equal(got[:4], np.broadcast_to([200, 10, 10], (4, 8, 3)))
    np.testing.assert_array_equal(got[4:], np.full((4, 8, 3), 255))


def test_palette_transparency_is_composited_over_white() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 0
    image.paste(0, (0, 0, 8, 4))
    got = decode_image(encode(image, "GIF", transparency=0), BASE, LIMIT)
    np.testing.assert_array_equal(got[:4], np.full((4, 8, 3), 255))
    np.testing.assert_array_equal(got[4:], np.broadcast_to([0, 0, 255], (4, 8, 3)))


def test_batches_stack_and_name_the_bad_image() -> None:
    good = encode(random_rgb(8, 8))
    tensor = preprocess([good, good, good], plan(layout="NCHW"), LIMIT)
    assert tensor.shape == (3, 3, 8, 8)
    with pytest.raises(InvalidImage, match=r"images\[1\] is not an image"):
        preprocess([good, b"nope", good], BASE, LIMIT)


# ---- bad images ---------------------------------------------------------------------------------


def test_not_an_image() -> None:
    for data in (b"hello, world", b"", b"\x89PNG\r\n"):
        with pytest.raises(InvalidImage, match="image is not an image"):
            decode_image(data, BASE, LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "GIF", "BMP"])
def test_truncated_images(fmt: str) -> None:
    data = encode(random_rgb(64, 64), fmt)
    with pytest.raises(InvalidImage, match="truncated or corrupt|corrupt header|not an image"):
        decode_image(data[: len(data) // 2], BASE, LIMIT)


@pytest.mark.parametrize(("fmt", "name"), [("ICO", "ICO"), ("PPM", "PPM"), ("PCX", "PCX")])
def test_formats_pillow_knows_but_we_do_not_take_are_415(fmt: str, name: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=f"image is {name}, which is not supported"):
        decode_image(encode(random_rgb(16, 16), fmt), BASE, LIMIT)


def test_more_pixels_than_the_limit_is_413_before_decoding() -> None:
    data = encode(np.zeros((100, 200), np.uint8))
    with pytest.raises(PayloadTooLarge, match=r"200x100 = 20000 pixels, over the limit of 5000"):
        decode_image(data, BASE, 5000)


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_decompression_bombs_are_refused_from_the_header(side: int) -> None:
    # 10k x 10k passes Pillow's hard ceiling but not its warning; 100k x 100k passes neither.
    data = png_header(side, side)
    assert len(data) < 200 * 1024
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        decode_image(data, GREY, LIMIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as a server runs: Pillow's warning is not an error
        with pytest.raises(PayloadTooLarge, match="over the limit"):
            decode_image(data, GREY, LIMIT)
