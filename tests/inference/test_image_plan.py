"""The effective preprocessing: config.json resolved against a model's input."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import BadRequest
from app.inference.image_plan import IMAGENET_MEAN, IMAGENET_STD, image_plan
from app.registry.config import PreprocessConfig
from app.registry.model import TensorSpec


def spec(shape: list[int], datatype: str = "FP32", name: str = "image") -> TensorSpec:
    return TensorSpec(name, datatype, tuple(shape))


def plan_for(shape: list[int], datatype: str = "FP32", **config: Any) -> Any:
    return image_plan("m", [spec(shape, datatype)], PreprocessConfig(**config))


def test_grayscale_float_default_is_scaled_to_unit_range() -> None:
    plan = image_plan("m", [spec([-1, 1, 8, 8])], None)
    assert plan.describe() == {
        "input": "image",
        "color": "L",
        "size": [8, 8],
        "resize": "stretch",
        "resample": "bilinear",
        "crop_fraction": 1.0,
        "layout": "NCHW",
        "dtype": "float32",
        "scale": 1 / 255,
        "mean": [0.0],
        "std": [1.0],
        "invert": False,
    }
    assert plan.fixed_batch is None


def test_rgb_float_default_uses_imagenet_statistics() -> None:
    plan = plan_for([-1, 3, 224, 224])
    assert (plan.color, plan.height, plan.width, plan.layout) == ("RGB", 224, 224, "NCHW")
    assert plan.mean == IMAGENET_MEAN and plan.std == IMAGENET_STD
    assert plan.scale == pytest.approx(1 / 255)


def test_bgr_default_statistics_follow_the_channel_order() -> None:
    plan = plan_for([-1, 3, 32, 32], color="BGR")
    assert plan.mean == IMAGENET_MEAN[::-1] and plan.std == IMAGENET_STD[::-1]


def test_uint8_nhwc_is_not_normalised() -> None:
    plan = plan_for([-1, 224, 224, 3], "UINT8")
    assert (plan.layout, plan.color, plan.dtype) == ("NHWC", "RGB", "uint8")
    assert (plan.scale, plan.mean, plan.std) == (1.0, (0.0,) * 3, (1.0,) * 3)


def test_int8_is_centred_on_zero() -> None:
    plan = plan_for([-1, 1, 4, 4], "INT8")
    assert (plan.scale, plan.mean, plan.std) == (1.0, (128.0,), (1.0,))


def test_any_configured_statistic_makes_the_others_neutral() -> None:
    plan = plan_for([-1, 3, 8, 8], scale=0.5)
    assert (plan.scale, plan.mean, plan.std) == (0.5, (0.0,) * 3, (1.0,) * 3)
    plan = plan_for([-1, 3, 8, 8], mean=[0.5])
    assert (plan.scale, plan.mean, plan.std) == (pytest.approx(1 / 255), (0.5,) * 3, (1.0,) * 3)


def test_dynamic_size_needs_config_and_a_fixed_batch_is_kept() -> None:
    with pytest.raises(BadRequest, match=r"dynamic height or width; set preprocess.size"):
        plan_for([-1, 3, -1, -1])
    plan = plan_for([2, 3, -1, -1], size=(10, 20))
    assert (plan.height, plan.width, plan.fixed_batch) == (10, 20, 2)


def test_layout_from_config_and_from_dynamic_channels() -> None:
    assert plan_for([-1, 8, 8, 3], layout="NHWC").layout == "NHWC"
    assert plan_for([-1, -1, 8, 8]).color == "RGB"
    assert plan_for([-1, 8, 8, -1], color="L").layout == "NHWC"


def test_configured_input_among_several_image_inputs() -> None:
    inputs = [spec([-1, 3, 8, 8], name="a")]
    assert image_plan("m", inputs, PreprocessConfig(input="a")).input == "a"


@pytest.mark.parametrize(
    ("inputs", "config", "message"),
    [
        ([spec([-1, 4], name="x")], {}, r"model 'm' has no image-like input \(inputs: x \[-1, 4\]"),
        ([spec([-1, 1, 8, 8], "INT64")], {}, "no image-like input"),
        ([spec([-1, 5, 8, 8])], {}, "no image-like input"),
        ([spec([-1, 3, 8, 8], name="a"), spec([-1], name="b")], {}, r"cannot fill \(b\)"),
        ([spec([-1, 3, 8, 8])], {"input": "nope"}, "preprocess.input 'nope' is not one"),
        ([spec([-1, 4], name="x")], {"input": "x"}, "no image-like input: 'x"),
        ([spec([-1, 3, 8, 8])], {"color": "L"}, "gives 1 channel.* has 3"),
        ([spec([-1, 1, 8, 8])], {"size": (4, 4)}, r"preprocess.size \[4, 4\] does not match"),
        ([spec([-1, 1, 8, 8])], {"dtype": "uint8"}, "preprocess.dtype 'uint8' does not match"),
        ([spec([-1, 1, 8, 8])], {"mean": [0.1, 0.2, 0.3]}, "mean has 3 values for 1 channel"),
    ],
)
def test_models_that_cannot_take_images_say_why(
    inputs: list[TensorSpec], config: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        image_plan("m", inputs, PreprocessConfig(**config))


@pytest.mark.parametrize(
    "config",
    [{"size": (0, 4)}, {"std": [0.0]}, {"mean": [1, 2]}, {"crop_fraction": 0}, {"invert": "x"}],
)
def test_config_refuses_bad_values(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PreprocessConfig(**config)
