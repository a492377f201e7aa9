"""Whether a model's rows stay apart: the condition for batching requests together.

Dynamic batching stacks the rows of several requests into one run and hands each request
its own rows of the outputs. That is only right when every output row depends on its own
input rows alone; a graph that mixes rows (a CumSum or a normalisation over the batch axis,
say) would give each client values computed from other clients' data. So a version with
dynamic batching is run at load on a few distinct rows together and on each row alone; an
output that differs is refused with its name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from app.registry.config import ModelConfig
from app.registry.time_limits import StepTimedOut

Run = Callable[[ort.InferenceSession, dict[str, np.ndarray]], list[np.ndarray]]
ROWS = 3


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
) -> str | None:
    """The name of an output whose rows depend on other rows of the batch, if any.

    ``inputs``: (name, v2 datatype, dtype, shape with -1 for dynamic dimensions). A model
    that fails on these rows, or gives different answers to the same run twice, cannot be
    judged and passes.
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
            if not _same(batch[i : i + 1], alone[i][j]):
                return name
    return None


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
