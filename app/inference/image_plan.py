"""A model's effective image preprocessing: its config.json resolved against its input.

What the config leaves out is inferred from the input's shape and dtype; a model that cannot
take images gets a 400 that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.errors import BadRequest
from app.registry.config import PreprocessConfig
from app.registry.model import TensorSpec

Invert = bool | Literal["auto"]
Color = Literal["L", "RGB", "BGR"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DTYPES = {"float16", "float32", "float64", "uint8", "int8"}


@dataclass(frozen=True, slots=True)
class ImagePlan:
    """The effective preprocessing of one model input: nothing left to infer."""

    input: str
    color: Color
    height: int
    width: int
    resize: Literal["stretch", "shorter_side_crop"]
    resample: Literal["nearest", "box", "bilinear", "bicubic", "lanczos"]
    crop_fraction: float
    layout: Literal["NCHW", "NHWC"]
    dtype: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    invert: Invert
    #: The input's fixed first dimension, or None when it is dynamic (any batch size).
    fixed_batch: int | None

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def describe(self) -> dict[str, Any]:
        """The plan as model metadata shows it."""
        return {
            "input": self.input,
            "color": self.color,
            "size": [self.height, self.width],
            "resize": self.resize,
            "resample": self.resample,
            "crop_fraction": self.crop_fraction,
            "layout": self.layout,
            "dtype": self.dtype,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "invert": self.invert,
        }


def _describe_input(spec: TensorSpec) -> str:
    return f"{spec.name} {list(spec.shape)} {spec.datatype}"


def _layout_of(spec: TensorSpec, config: PreprocessConfig) -> Literal["NCHW", "NHWC"] | None:
    """The configured layout, else NCHW or NHWC from where a 1 or 3 channel axis sits."""
    if config.layout is not None:
        return config.layout
    dims = spec.shape
    if dims[1] in (1, 3):
        return "NCHW"
    if dims[3] in (1, 3):
        return "NHWC"
    if dims[1] == -1:
        return "NCHW"
    if dims[3] == -1:
        return "NHWC"
    return None


def _is_image_like(spec: TensorSpec, config: PreprocessConfig) -> bool:
    if len(spec.shape) != 4 or str(spec.dtype) not in _DTYPES:
        return False
    layout = _layout_of(spec, config)
    if layout is None:
        return False
    channels = spec.shape[1] if layout == "NCHW" else spec.shape[3]
    return channels in (-1, 1, 3)


def _image_input(model: str, inputs: list[TensorSpec], config: PreprocessConfig) -> TensorSpec:
    listing = ", ".join(_describe_input(s) for s in inputs) or "none"
    if config.input is not None:
        found = next((s for s in inputs if s.name == config.input), None)
        if found is None:
            raise BadRequest(
                f"model '{model}': preprocess.input '{config.input}' is not one of its inputs "
                f"({listing})"
            )
        if not _is_image_like(found, config):
            raise BadRequest(
                f"model '{model}' has no image-like input: '{_describe_input(found)}' is not "
                "4-D [N,C,H,W] or [N,H,W,C] with 1 or 3 channels of a float or 8-bit type"
            )
        spec = found
    else:
        candidates = [s for s in inputs if _is_image_like(s, config)]
        if not candidates:
            raise BadRequest(
                f"model '{model}' has no image-like input (inputs: {listing}); an image feeds "
                "a 4-D [N,C,H,W] or [N,H,W,C] input with 1 or 3 channels of a float or 8-bit "
                "type"
            )
        spec = candidates[0]
    others = [s.name for s in inputs if s.name != spec.name]
    if others:
        raise BadRequest(
            f"model '{model}' also has inputs an image cannot fill ({', '.join(others)}): "
            "use /predict with tensors or /v2 infer"
        )
    return spec


def _channel_values(
    model: str, name: str, values: list[float] | None, channels: int, default: tuple[float, ...]
) -> tuple[float, ...]:
    if values is None:
        return default
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise BadRequest(
            f"model '{model}': preprocess.{name} has {len(values)} values for {channels} channel(s)"
        )
    return tuple(values)


def image_plan(model: str, inputs: list[TensorSpec], config: PreprocessConfig | None) -> ImagePlan:
    """Resolve ``config`` against the model's inputs; 400 naming why when it cannot take images."""
    config = config if config is not None else PreprocessConfig()
    spec = _image_input(model, inputs, config)
    layout = _layout_of(spec, config)
    assert layout is not None  # _image_input checked it
    dims = spec.shape
    channel_dim, height_dim, width_dim = (
        (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    )
    color: Color = config.color or ("L" if channel_dim == 1 else "RGB")
    channels = 1 if color == "L" else 3
    if channel_dim not in (-1, channels):
        raise BadRequest(
            f"model '{model}': preprocess.color '{color}' gives {channels} channel(s) but input "
            f"'{_describe_input(spec)}' has {channel_dim} ({layout})"
        )
    if config.size is not None:
        height, width = config.size
        if height_dim not in (-1, height) or width_dim not in (-1, width):
            raise BadRequest(
                f"model '{model}': preprocess.size {list(config.size)} does not match input "
                f"'{_describe_input(spec)}' ({layout})"
            )
    elif height_dim > 0 and width_dim > 0:
        height, width = height_dim, width_dim
    else:
        raise BadRequest(
            f"model '{model}': input '{_describe_input(spec)}' has a dynamic height or width; "
            "set preprocess.size [height, width] in its config.json"
        )
    dtype = str(spec.dtype)
    if config.dtype is not None and config.dtype != dtype:
        raise BadRequest(
            f"model '{model}': preprocess.dtype '{config.dtype}' does not match input "
            f"'{_describe_input(spec)}'"
        )
    floating = dtype.startswith("float")
    configured = (config.scale, config.mean, config.std) != (None, None, None)
    # With nothing configured, 3-channel float inputs get ImageNet's statistics and int8
    # inputs are centred on 0; once any of scale/mean/std is given the others are neutral.
    default_mean: tuple[float, ...] = (0.0,) * channels
    default_std: tuple[float, ...] = (1.0,) * channels
    if not configured and floating and channels == 3:
        default_mean = IMAGENET_MEAN if color == "RGB" else IMAGENET_MEAN[::-1]
        default_std = IMAGENET_STD if color == "RGB" else IMAGENET_STD[::-1]
    elif not configured and dtype == "int8":
        default_mean = (128.0,) * channels
    scale = config.scale if config.scale is not None else (1 / 255 if floating else 1.0)
    return ImagePlan(
        input=spec.name,
        color=color,
        height=height,
        width=width,
        resize=config.resize,
        resample=config.resample,
        crop_fraction=config.crop_fraction,
        layout=layout,
        dtype=dtype,
        scale=scale,
        mean=_channel_values(model, "mean", config.mean, channels, default_mean),
        std=_channel_values(model, "std", config.std, channels, default_std),
        invert=config.invert,
        fixed_batch=dims[0] if dims[0] > 0 else None,
    )
