"""Class scores to predictions: optional softmax, top-k, labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from app.errors import BadRequest
from app.registry.config import PostprocessConfig
from app.registry.model import TensorSpec

#: Largest k a request may ask for (k is also capped at the number of classes).
MAX_TOP_K = 1000


@dataclass(frozen=True, slots=True)
class ClassifierPlan:
    """Which output holds class scores and how they become predictions."""

    output: str
    softmax: bool | Literal["auto"]
    top_k: int

    def describe(self) -> dict[str, Any]:
        return {"output": self.output, "softmax": self.softmax, "top_k": self.top_k}


def _is_scores(spec: TensorSpec) -> bool:
    return len(spec.shape) == 2 and spec.datatype in ("FP16", "FP32", "FP64")


def classifier_plan(
    model: str, outputs: list[TensorSpec], config: PostprocessConfig | None
) -> ClassifierPlan | None:
    """The configured output, else the first 2-D float one; None when there is none."""
    config = config if config is not None else PostprocessConfig()
    if config.output is not None:
        spec = next((s for s in outputs if s.name == config.output), None)
        if spec is None or len(spec.shape) != 2:
            names = ", ".join(f"{s.name} {list(s.shape)}" for s in outputs)
            raise BadRequest(
                f"model '{model}': postprocess.output '{config.output}' is not a 2-D output "
                f"[batch, classes] (outputs: {names})"
            )
    else:
        spec = next((s for s in outputs if _is_scores(s)), None)
        if spec is None:
            return None
    return ClassifierPlan(spec.name, config.softmax, config.top_k)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def is_distribution(scores: np.ndarray) -> bool:
    """True when every row is already in [0, 1] and sums to 1 (probabilities)."""
    if scores.size == 0:
        return True
    in_range = bool(((scores >= 0) & (scores <= 1)).all())
    return in_range and bool(np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` highest scores per row, best first (ties: lower index)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def predictions(
    scores: np.ndarray, plan: ClassifierPlan, k: int | None, labels: list[str] | None
) -> list[list[dict[str, Any]]]:
    """One list per row of ``{"label", "index", "score"}``, best first; no label without labels."""
    if scores.ndim != 2:
        raise BadRequest(f"output '{plan.output}' has shape {list(scores.shape)}, not 2-D")
    # float32 scores stay float32 so that orjson writes them as short as the model made them.
    values = scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float32)
    if plan.softmax is True or (plan.softmax == "auto" and not is_distribution(values)):
        values = softmax(values)
    indices, best = top_k(values, k if k is not None else plan.top_k)
    rows: list[list[dict[str, Any]]] = []
    for row_indices, row_scores in zip(indices.tolist(), best, strict=True):
        row = []
        for index, score in zip(row_indices, row_scores, strict=True):
            entry: dict[str, Any] = {"index": index, "score": score}
            if labels is not None:
                entry = {"label": labels[index] if index < len(labels) else None, **entry}
            row.append(entry)
        rows.append(row)
    return rows
