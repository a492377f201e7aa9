"""Triton-shaped configs from load requests: an input's format declares the image layout."""

from __future__ import annotations

import json

import pytest

from app.errors import InvalidModel
from app.registry.triton_config import config_from_load


def translated(doc: dict[str, object]) -> dict[str, object]:
    return json.loads(config_from_load(json.dumps(doc), "m"))  # type: ignore[no-any-return]


def test_an_input_format_becomes_the_image_layout() -> None:
    doc = {
        "max_batch_size": 8,
        "input": [
            {"name": "pixels", "data_type": "TYPE_FP32", "format": "FORMAT_NHWC", "dims": [8, 8, 1]}
        ],
        "output": [{"name": "scores", "data_type": "TYPE_FP32", "dims": [10]}],
    }
    assert translated(doc) == {
        "max_batch_size": 8,
        "preprocess": {"input": "pixels", "layout": "NHWC"},
    }


def test_format_none_and_no_format_declare_nothing() -> None:
    doc = {"input": [{"name": "a", "format": "FORMAT_NONE"}, {"name": "b"}]}
    assert translated(doc) == {}


def test_the_format_joins_a_declared_preprocess() -> None:
    doc = {
        "input": [{"name": "x", "format": "FORMAT_NCHW"}],
        "preprocess": {"color": "RGB", "layout": "NCHW"},
    }
    assert translated(doc)["preprocess"] == {"color": "RGB", "layout": "NCHW", "input": "x"}


@pytest.mark.parametrize(
    ("inputs", "preprocess", "reason"),
    [
        ([{"name": "x", "format": "FORMAT_NCDHW"}], None, "is not one of"),
        (
            [{"name": "a", "format": "FORMAT_NCHW"}, {"name": "b", "format": "FORMAT_NHWC"}],
            None,
            "only one input",
        ),
        ([{"name": "x", "format": "FORMAT_NCHW"}], {"layout": "NHWC"}, "preprocess.layout"),
        ([{"name": "x", "format": "FORMAT_NCHW"}], {"input": "y"}, "preprocess.input"),
    ],
)
def test_what_is_refused(inputs: object, preprocess: object, reason: str) -> None:
    doc: dict[str, object] = {"input": inputs}
    if preprocess is not None:
        doc["preprocess"] = preprocess
    with pytest.raises(InvalidModel, match=reason):
        translated(doc)
