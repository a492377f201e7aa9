"""How far the optimised model's outputs are from the original's, and whether that is allowed.

Every output gets its largest and mean absolute error and its relative error
(``|optimised - original| / |original|``, L2 norms over all samples). Class-score outputs of a
classifier (a model with labels or a ``postprocess`` section) are judged by top-1 agreement
and top-5 overlap; other outputs by their relative error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.registry.config import OptimizeConfig, PostprocessConfig
from app.registry.model import TensorSpec

FLOATS = ("FP16", "FP32", "FP64")


def class_outputs(
    outputs: list[TensorSpec], postprocess: PostprocessConfig | None, labelled: bool
) -> set[str]:
    """Outputs holding class scores: a classifier's score output and its like-shaped peers
    (``logits`` beside ``probabilities``); none for a model that is not a classifier."""
    if postprocess is None and not labelled:
        return set()
    wanted = postprocess.output if postprocess is not None else None
    scores = [s for s in outputs if len(s.shape) == 2 and s.datatype in FLOATS]
    main = next((s for s in scores if s.name == wanted), scores[0] if scores else None)
    if main is None:
        return set()
    return {s.name for s in scores if s.shape[1] == main.shape[1]}


@dataclass(frozen=True, slots=True)
class OutputAccuracy:
    """The figures of one output over every checked sample."""

    name: str
    max_abs_error: float | None
    mean_abs_error: float | None
    relative_error: float | None
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    #: What it was judged by: ``top1_agreement``, ``relative_error`` or ``agreement`` (the
    #: share of equal elements, for outputs that are not floats).
    criterion: str = "relative_error"
    limit: float = 0.0
    passed: bool = True

    def as_dict(self) -> dict[str, Any]:
        out = {
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "relative_error": self.relative_error,
            "criterion": self.criterion,
            "limit": self.limit,
            "passed": self.passed,
        }
        if self.criterion == "agreement":
            out["agreement"] = self.top1_agreement
        elif self.top1_agreement is not None:
            out["top1_agreement"] = self.top1_agreement
            out["top5_overlap"] = self.top5_overlap
        return out

    def describe(self) -> str:
        """One line of figures, as an error message shows them."""
        verdict = "" if self.passed else f" (limit {self.criterion} {self.limit:g})"
        if self.criterion == "agreement":
            return f"'{self.name}': {self.top1_agreement:.4f} of elements equal{verdict}"
        if self.relative_error is None:
            return f"'{self.name}': not finite where the original is{verdict}"
        figures = (
            f"relative error {self.relative_error:.4g}, max abs error {self.max_abs_error:.4g}, "
            f"mean abs error {self.mean_abs_error:.4g}"
        )
        if self.top1_agreement is not None:
            figures = (
                f"top-1 agreement {self.top1_agreement:.4f}, top-5 overlap "
                f"{self.top5_overlap:.4f}, {figures}"
            )
        return f"'{self.name}': {figures}{verdict}"


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    top1 = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    k = min(5, reference.shape[1])
    ref_top = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    cand_top = np.argsort(-candidate, axis=1, kind="stable")[:, :k]
    shared = [len(set(a) & set(b)) for a, b in zip(ref_top, cand_top, strict=True)]
    return top1, float(np.mean(shared) / k)


def compare_output(
    name: str, reference: np.ndarray, candidate: np.ndarray, scores: bool, limits: OptimizeConfig
) -> OutputAccuracy:
    """The figures of one output and the verdict of its limit."""
    tolerance = limits.tolerances.get(name)
    if reference.dtype.kind not in "fc":
        # Labels, indices, flags: the share of elements that came out the same.
        equal = reference == candidate
        agreement = float(np.mean(equal)) if equal.size else 1.0
        return OutputAccuracy(
            name, None, None, None, agreement, None,
            criterion="agreement", limit=limits.min_agreement,
            passed=agreement >= limits.min_agreement,
        )  # fmt: skip
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    if not np.isfinite(cand[np.isfinite(ref)]).all():
        return OutputAccuracy(name, None, None, None, limit=0.0, passed=False)
    finite = np.isfinite(ref) & np.isfinite(cand)
    diff = np.abs(ref - cand)[finite]
    norm = float(np.linalg.norm(ref[finite]))
    relative = float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    if scores and reference.ndim == 2 and len(reference):
        top1, top5 = _agreement(ref, cand)
        passed = top1 >= limits.min_agreement
        if tolerance is not None:
            passed = passed and relative <= tolerance
        return OutputAccuracy(
            name, max_abs, mean_abs, relative, top1, top5,
            criterion="top1_agreement", limit=limits.min_agreement, passed=passed,
        )  # fmt: skip
    limit = tolerance if tolerance is not None else limits.max_relative_error
    return OutputAccuracy(name, max_abs, mean_abs, relative, limit=limit, passed=relative <= limit)


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    scores: set[str],
    limits: OptimizeConfig,
) -> list[OutputAccuracy]:
    """Every output's figures, in the model's output order."""
    return [
        compare_output(name, reference[name], candidate[name], name in scores, limits)
        for name in reference
    ]
