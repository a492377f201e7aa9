"""Triton's classification extension: "score:index:label" strings of the k best classes."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import BadRequest
from app.inference.classification import class_strings
from app.protocol.limits import RequestLimits
from app.protocol.v2 import class_count, parse_infer_request


def test_best_classes_first_with_labels() -> None:
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], np.float32)
    out = class_strings(scores, 2, ["cat", "dog", "eel"], batched=True)
    assert out.shape == (2, 2) and out.dtype == np.object_
    assert out.tolist() == [
        [b"0.700000:1:dog", b"0.200000:2:eel"],
        [b"0.500000:0:cat", b"0.250000:1:dog"],  # ties keep class order
    ]


def test_without_labels_unbatched_and_more_than_there_are() -> None:
    out = class_strings(np.array([3, 9, 1], np.int32), 5, None, batched=False)
    assert out.tolist() == [b"9.000000:1", b"3.000000:0", b"1.000000:2"]
    # Dimensions after the batch one count as classes, flattened (Triton's way).
    many = class_strings(np.arange(8, dtype=np.float32).reshape(2, 2, 2), 1, None, batched=True)
    assert many.tolist() == [[b"3.000000:3"], [b"7.000000:3"]]


def test_only_numeric_outputs_classify() -> None:
    with pytest.raises(BadRequest, match="numeric"):
        class_strings(np.array([["a"]], dtype=np.object_), 1, None, batched=True)


@pytest.mark.parametrize("value", [-1, True, 1.5, "3"])
def test_class_count_must_be_a_count(value: object) -> None:
    with pytest.raises(BadRequest, match="classification"):
        class_count(value, "probabilities")


def test_the_parameter_is_read_per_output() -> None:
    body = (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],'
        b' "outputs": [{"name": "p", "parameters": {"classification": 3}}, {"name": "q"}]}'
    )
    request = parse_infer_request(body, None, RequestLimits())
    assert request.classification == {"p": 3}
