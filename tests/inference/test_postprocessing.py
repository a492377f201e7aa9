"""Class scores to predictions: softmax, top-k, labels."""

from __future__ import annotations

import numpy as np
import pytest

from app.errors import BadRequest
from app.inference.postprocessing import (
    ClassifierPlan,
    classifier_plan,
    is_distribution,
    predictions,
    softmax,
    top_k,
)
from app.registry.config import PostprocessConfig
from app.registry.model import TensorSpec

LOGITS = np.array([[1.0, 3.0, 2.0, -1.0], [0.5, 0.5, 4.0, 0.5]], np.float32)


def reference_softmax(x: np.ndarray) -> np.ndarray:
    rows = []
    for row in x.astype(np.float64):
        e = [np.exp(v) for v in row]
        rows.append([v / sum(e) for v in e])
    return np.array(rows)


def test_softmax_matches_the_formula_and_survives_large_logits() -> None:
    np.testing.assert_allclose(softmax(LOGITS.astype(np.float64)), reference_softmax(LOGITS))
    big = softmax(np.array([[1000.0, 1001.0]]))
    assert np.isfinite(big).all()
    np.testing.assert_allclose(big, reference_softmax(np.array([[0.0, 1.0]])))


def test_is_distribution() -> None:
    assert is_distribution(reference_softmax(LOGITS))
    assert not is_distribution(LOGITS)
    assert not is_distribution(np.array([[0.2, 0.2]]))


def test_top_k_is_best_first_with_ties_by_index() -> None:
    indices, values = top_k(LOGITS, 3)
    assert indices.tolist() == [[1, 2, 0], [2, 0, 1]]
    assert values.tolist() == [[3.0, 2.0, 1.0], [4.0, 0.5, 0.5]]
    assert top_k(LOGITS, 99)[0].shape == (2, 4)


def test_predictions_with_labels_apply_softmax_on_logits() -> None:
    plan = ClassifierPlan("logits", "auto", 5)
    rows = predictions(LOGITS, plan, 2, ["a", "b", "c", "d"])
    probabilities = reference_softmax(LOGITS)
    assert [[(e["label"], e["index"]) for e in row] for row in rows] == [
        [("b", 1), ("c", 2)],
        [("c", 2), ("a", 0)],
    ]
    assert rows[0][0]["score"] == pytest.approx(probabilities[0, 1], rel=1e-6)
    assert list(rows[0][0]) == ["label", "index", "score"]


def test_predictions_without_labels_and_probabilities_as_they_are() -> None:
    probabilities = reference_softmax(LOGITS).astype(np.float32)
    rows = predictions(probabilities, ClassifierPlan("p", "auto", 1), None, None)
    assert rows == [
        [{"index": 1, "score": probabilities[0, 1]}],
        [{"index": 2, "score": probabilities[1, 2]}],
    ]


def test_softmax_forced_on_or_off() -> None:
    off = predictions(LOGITS, ClassifierPlan("l", False, 1), None, None)
    assert off[0][0]["score"] == 3.0
    probabilities = reference_softmax(LOGITS)
    on = predictions(probabilities, ClassifierPlan("p", True, 1), None, None)
    assert on[0][0]["score"] == pytest.approx(reference_softmax(probabilities)[0, 1])


def test_short_labels_and_fp16_scores() -> None:
    rows = predictions(LOGITS.astype(np.float16), ClassifierPlan("l", False, 4), None, ["a"])
    assert [e["label"] for e in rows[1]] == [None, "a", None, None]
    assert rows[1][0]["score"] == 4.0


def test_plan_picks_the_first_two_dimensional_float_output() -> None:
    outputs = [
        TensorSpec("mask", "FP32", (-1, 1, 8, 8)),
        TensorSpec("ids", "INT64", (-1, 10)),
        TensorSpec("scores", "FP32", (-1, 10)),
    ]
    plan = classifier_plan("m", outputs, None)
    assert plan is not None and plan.describe() == {
        "output": "scores",
        "softmax": "auto",
        "top_k": 5,
    }
    assert classifier_plan("m", outputs[:2], None) is None
    configured = classifier_plan("m", outputs, PostprocessConfig(output="ids", top_k=2))
    assert configured == ClassifierPlan("ids", "auto", 2)
    with pytest.raises(BadRequest, match="postprocess.output 'mask' is not a 2-D output"):
        classifier_plan("m", outputs, PostprocessConfig(output="mask"))
