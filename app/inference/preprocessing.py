"""Images to input tensors: Pillow decodes and resizes each image, numpy does the rest at once.

``preprocess`` turns encoded images into one stacked tensor following an ``ImagePlan``. It is
pure and blocking: callers run it off the event loop.
"""

from __future__ import annotations

import ctypes
import functools
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType
from app.inference.image_plan import ImagePlan, Invert

#: Pillow formats accepted, and the media types that name them.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MEDIA_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/x-bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/gif": "GIF",
    "image/tiff": "TIFF",
    "image/tiff-fx": "TIFF",
}
SUPPORTED = "PNG, JPEG, WebP, BMP, GIF or TIFF"

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# After decoding an image that took more than this, freed memory goes back to the system.
RELEASE_AFTER_BYTES = 32 * 1024 * 1024
_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# Bytes a pixel takes in memory, by Pillow mode (multi-band modes take 4 whatever their bands).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# Modes resized as they are (all filters apply, alpha premultiplied by Pillow itself).
_RESIZED_AS_IS = {"L", "LA", "RGB", "RGBA", "RGBX", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


# ---- decoding: bytes -> uint8 [H, W, C] at the plan's size ------------------------------------


def _known_format(data: bytes) -> str | None:
    """The name of a format Pillow knows but this service does not take, if the data is one."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            return str(other.format)
    except Exception:  # any failure means "not an image we can name"
        return None


def open_image(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """Identify ``data`` from its header; refuse other formats (415) and too many pixels (413).

    Nothing is decoded yet, so a decompression bomb costs only its header.
    """
    if data.lstrip()[:5] in (b"<svg ", b"<svg>", b"<?xml"):
        # Vector images are not decoded here; Pillow would only call them "not an image".
        raise UnsupportedMediaType(f"{what} is SVG, which is not supported: send {SUPPORTED}")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own ceiling (2x Image.MAX_IMAGE_PIXELS), read from the header too.
        raise PayloadTooLarge(f"{what} is over the limit of {max_pixels} pixels") from None
    except UnidentifiedImageError:
        other = _known_format(data) if data else None
        if other is not None:
            raise UnsupportedMediaType(
                f"{what} is {other}, which is not supported: send {SUPPORTED}"
            ) from None
        raise InvalidImage(f"{what} is not an image ({SUPPORTED} are accepted)") from None
    except Exception as exc:  # a header the plugin could not parse
        raise InvalidImage(f"{what} has a corrupt header: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise PayloadTooLarge(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a corrupt EXIF block: the image is taken as it is
        return 1


def _converts_first(image: Image.Image) -> bool:
    """Whether the image is converted to 8-bit L or RGB(A) before it is resized (palettes,
    bilevel, colour keys, unusual modes), rather than resized in its own mode first."""
    return image.mode not in _RESIZED_AS_IS or "transparency" in image.info


def decoded_bytes(image: Image.Image) -> int:
    """The most memory decoding ``image`` takes at once: its pixels in their own mode, a
    turned copy when EXIF turns it, and a 4-byte copy when it is converted before resizing."""
    pixels = image.width * image.height
    total = pixels * _MODE_BYTES.get(image.mode, 4)
    if _orientation(image) != 1:
        total *= 2
    if _converts_first(image):
        total += pixels * 4
    return total


def _crop_box(width: int, height: int, plan: ImagePlan) -> tuple[float, float, float, float] | None:
    """The source region that maps onto the plan's size (None: the whole image)."""
    if plan.resize == "stretch":
        return None
    scale = max(plan.width / width, plan.height / height) / plan.crop_fraction
    crop_w, crop_h = plan.width / scale, plan.height / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h)


def _draft(image: Image.Image, plan: ImagePlan) -> None:
    """Let the JPEG decoder scale down by 1/2..1/8 when the result still covers the plan."""
    if image.format != "JPEG":
        return
    width, height = image.size
    rotated = image.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED
    if rotated:
        width, height = height, width
    if plan.resize == "stretch":
        need_w, need_h = plan.width, plan.height
    else:
        scale = max(plan.width / width, plan.height / height) / plan.crop_fraction
        need_w, need_h = math.ceil(width * scale), math.ceil(height * scale)
    if rotated:
        need_w, need_h = need_h, need_w
    image.draft("L" if plan.color == "L" else None, (need_w, need_h))


def _to_mode(image: Image.Image, mode: Literal["L", "RGB"]) -> Image.Image:
    """8-bit L or RGB; 16-bit grey is scaled down, transparency is composited over white."""
    if image.mode in _SIXTEEN_BIT:
        grey = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        image = white
    return image if image.mode == mode else image.convert(mode)


def decode_image(
    data: bytes,
    plan: ImagePlan,
    max_pixels: int,
    what: str = "image",
    max_bytes: int | None = None,
) -> np.ndarray:
    """One encoded image as uint8 [height, width, channels] at the plan's size and colour.

    An image whose decoding would take more than ``max_bytes`` of memory (``decoded_bytes``,
    after the JPEG decoder's own reduction) is refused (413) before it is decoded. High bit
    depths and alpha are resized in their own mode and only then converted, so the full-size
    image is never copied but to turn it upright.
    """
    with open_image(data, max_pixels, what) as image:
        try:
            _draft(image, plan)
            need = decoded_bytes(image)
            if max_bytes is not None and need > max_bytes:
                raise PayloadTooLarge(
                    f"{what} ({image.width}x{image.height}, mode {image.mode}) would take "
                    f"{need} bytes once decoded, over the limit of {max_bytes}"
                )
            image.load()
            upright = ImageOps.exif_transpose(image)
            if upright is not image:
                image.close()  # the turned copy is all that is needed from now on
            mode: Literal["L", "RGB"] = "L" if plan.color == "L" else "RGB"
            if _converts_first(upright):
                upright = _to_mode(upright, mode)
            box = _crop_box(upright.width, upright.height, plan)
            if box is not None or upright.size != (plan.width, plan.height):
                upright = upright.resize(
                    (plan.width, plan.height), _RESAMPLE[plan.resample], box=box
                )
            pixels = _to_mode(upright, mode)
        except PayloadTooLarge:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge(f"{what} is over the limit of {max_pixels} pixels") from None
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, ...
            message = str(exc) or type(exc).__name__
            raise InvalidImage(f"{what} is truncated or corrupt: {message}") from None
        array = np.asarray(pixels)
    if need > RELEASE_AFTER_BYTES:
        release_memory()
    return array if array.ndim == 3 else array[:, :, np.newaxis]


# ---- numpy: uint8 [N, H, W, C] -> the input tensor ----------------------------------------------


def light_border(pixels: np.ndarray) -> np.ndarray:
    """Per image, whether the median of its outermost ring of pixels is light (> 127.5)."""
    ring = np.concatenate(
        [
            pixels[:, 0, :, :],
            pixels[:, -1, :, :],
            pixels[:, 1:-1, 0, :],
            pixels[:, 1:-1, -1, :],
        ],
        axis=1,
    )
    grey = ring.mean(axis=2)
    return np.asarray(np.median(grey, axis=1) > 127.5)


def to_tensor(pixels: np.ndarray, plan: ImagePlan, invert: Invert | None = None) -> np.ndarray:
    """Apply inversion, channel order, scale, mean/std, dtype and layout to a uint8 batch.

    ``pixels`` is uint8 [N, H, W, C]; ``invert`` (when given) overrides the plan's.
    """
    mode = plan.invert if invert is None else invert
    if mode == "auto":
        flip = light_border(pixels)
        if flip.any():
            pixels = np.where(flip[:, np.newaxis, np.newaxis, np.newaxis], 255 - pixels, pixels)
    elif mode:
        pixels = 255 - pixels
    if plan.color == "BGR":
        pixels = pixels[..., ::-1]
    std = np.asarray(plan.std, dtype=np.float64)
    gain = plan.scale / std
    offset = -np.asarray(plan.mean, dtype=np.float64) / std
    dtype = np.dtype(plan.dtype)
    if dtype.kind == "f":
        work = np.float64 if dtype == np.float64 else np.float32
        tensor = pixels.astype(work)
        np.multiply(tensor, gain.astype(work), out=tensor)
        if offset.any():
            np.add(tensor, offset.astype(work), out=tensor)
        tensor = tensor.astype(dtype, copy=False)
    elif (gain == 1).all() and not offset.any() and dtype == np.uint8:
        tensor = pixels
    else:
        info = np.iinfo(dtype)
        values = np.rint(pixels * gain + offset)
        tensor = np.clip(values, info.min, info.max).astype(dtype)
    if plan.layout == "NCHW":
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor)


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What the images of one request may cost."""

    #: Pixels of one image (from its header).
    max_pixels: int = 40_000_000
    #: Memory one image may take while it is decoded (``decoded_bytes``).
    max_decoded_bytes: int | None = None
    #: Pixels of all the images of a request together.
    max_request_pixels: int | None = None


def check_request_pixels(images: Sequence[bytes], limits: ImageLimits) -> None:
    """Refuse a request whose images (from their headers) hold too many pixels together."""
    if limits.max_request_pixels is None or len(images) < 2:
        return
    many = len(images) > 1
    total = 0
    for i, data in enumerate(images):
        with open_image(data, limits.max_pixels, f"images[{i}]" if many else "image") as image:
            total += image.width * image.height
        if total > limits.max_request_pixels:
            raise PayloadTooLarge(
                f"the images of this request hold over {limits.max_request_pixels} pixels "
                "together: send fewer or smaller images"
            )


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc keeps it for later otherwise)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def preprocess(
    images: Sequence[bytes],
    plan: ImagePlan,
    max_pixels: int,
    invert: Invert | None = None,
    limits: ImageLimits | None = None,
) -> np.ndarray:
    """Decode every image and stack them into the plan's input tensor (blocking)."""
    limits = limits if limits is not None else ImageLimits(max_pixels)
    check_request_pixels(images, limits)
    many = len(images) > 1
    pixels = np.stack(
        [
            decode_image(
                data,
                plan,
                limits.max_pixels,
                f"images[{i}]" if many else "image",
                limits.max_decoded_bytes,
            )
            for i, data in enumerate(images)
        ]
    )
    return to_tensor(pixels, plan, invert)
