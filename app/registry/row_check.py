"""Whether a model's rows stay apart: the condition for batching requests together.

Dynamic batching stacks the rows of several requests into one run and hands each request
its own rows of the outputs. That is only right when every output row depends on its own
input rows alone; a graph that mixes rows (a CumSum or a normalisation over the batch axis,
say) would give each client values computed from other clients' data. So a version with
dynamic batching is run at load on a few distinct rows together and on each row alone; an
output that differs is refused with its name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from app.registry.config import ModelConfig
from app.registry.time_limits import StepTimedOut

log = logging.getLogger(__name__)

Run = Callable[[ort.InferenceSession, dict[str, np.ndarray]], list[np.ndarray]]
ROWS = 3
#: Dynamic quantization (``DynamicQuantizeLinear``) scales the activations by the range of the
#: whole run: a row's answer moves with its batch-mates within the quantization's error. Up to
#: this relative difference (L2 norm of a row's change over its norm) that is not mixing.
QUANTIZED_TOLERANCE = 0.05


def _rows(datatype: str, dtype: np.dtype[np.generic], shape: tuple[int, ...]) -> np.ndarray:
    """Three distinct rows of an input (small values: integers may be indices)."""
    rng = np.random.default_rng(7)
    if datatype == "BYTES":
        return np.array([np.full(shape[1:], str(i), object) for i in range(ROWS)], object)
    if dtype.kind == "b":
        return np.array([np.full(shape[1:], i % 2 == 1) for i in range(ROWS)])
    if dtype.kind in ("i", "u"):
        return np.array([np.full(shape[1:], i, dtype) for i in range(ROWS)])
    return rng.uniform(0.0, 1.0, shape).astype(dtype)


def mixed_output(
    session: ort.InferenceSession,
    inputs: list[tuple[str, str, np.dtype[np.generic], tuple[int, ...]]],
    output_names: list[str],
    run: Run,
    quantizes_activations: Callable[[], bool] = lambda: False,
) -> str | None:
    """The name of an output whose rows depend on other rows of the batch, if any.

    ``inputs``: (name, v2 datatype, dtype, shape with -1 for dynamic dimensions). A model
    that fails on these rows, or gives different answers to the same run twice, cannot be
    judged and passes. ``quantizes_activations`` says whether the graph quantizes its
    activations dynamically (asked only when rows differ): then differences up to
    ``QUANTIZED_TOLERANCE`` pass.
    """
    feeds = {
        name: _rows(datatype, dtype, (ROWS, *(1 if d == -1 else d for d in shape[1:])))
        for name, datatype, dtype, shape in inputs
    }
    try:
        together = run(session, feeds)
        again = run(session, feeds)
        alone = [run(session, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(ROWS)]
    except StepTimedOut:
        raise
    except Exception:  # onnxruntime raises several unrelated types
        return None
    for first, second in zip(together, again, strict=True):
        if not _same(first, second):
            return None  # not deterministic: nothing to compare with
    for j, name in enumerate(output_names):
        batch = together[j]
        if batch.ndim == 0 or batch.shape[0] != ROWS:
            continue  # not one row a row: the batcher runs such requests one at a time
        for i in range(ROWS):
            row, single = batch[i : i + 1], alone[i][j]
            if _same(row, single):
                continue
            if _close(row, single, QUANTIZED_TOLERANCE) and quantizes_activations():
                log.info(
                    "output '%s' moves with the other rows of a batch within %.0f%% (dynamic "
                    "quantization scales activations by the batch's range): batching allowed",
                    name, QUANTIZED_TOLERANCE * 100,
                )  # fmt: skip
                continue
            return name
    return None


def dynamic_quantization(path: Path) -> bool:
    """Whether the model file quantizes activations at run time (``DynamicQuantizeLinear``)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # an unreadable file was refused before it got here
        return False
    return any(node.op_type == "DynamicQuantizeLinear" for node in graph.node)


def _close(a: np.ndarray, b: np.ndarray, tolerance: float) -> bool:
    if a.shape != b.shape or a.dtype.kind not in ("f", "c"):
        return False
    scale = float(np.linalg.norm(b))
    return bool(np.isfinite(scale)) and float(np.linalg.norm(a - b)) <= tolerance * max(
        scale, 1e-12
    )


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in ("f", "c"):
        # Kernels may sum a batch in another order than a single row: allow for rounding.
        return bool(np.allclose(a, b, rtol=1e-3, atol=1e-5, equal_nan=True))
    return bool(np.array_equal(a, b))


def batches_rows(config: ModelConfig, max_batch_size: int) -> bool:
    """Whether requests of this version will be batched together (and must be checked)."""
    batching = config.dynamic_batching
    return (
        batching is not None and batching.enabled and max_batch_size > 1 and config.warmup.enabled
    )
