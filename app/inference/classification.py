"""Triton's classification extension: an output asked for with ``classification: k`` comes
back as its k best classes, strings "score:index:label" (":label" only with labels.txt).

Every dimension after the batch dimension counts as a class (Triton flattens them alike); an
unbatched model's whole output is one row. The answer is a BYTES tensor [batch, k] ([k]
unbatched), best first.
"""

from __future__ import annotations

import numpy as np

from app.errors import BadRequest
from app.registry.model import Feeds, ModelVersion


def class_strings(
    array: np.ndarray, count: int, labels: list[str] | None, batched: bool
) -> np.ndarray:
    """The ``count`` best classes of each row of ``array`` as "score:index[:label]" bytes."""
    if array.dtype.kind not in "fiub" or array.dtype == np.bool_:
        raise BadRequest(f"classification needs a numeric output, not {array.dtype}")
    rows = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(count, rows.shape[1])
    # A stable descending sort: equal scores keep their class order, as Triton's do.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    for r, row in enumerate(order):
        for j, index in enumerate(row):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, j] = text.encode()
    return out if batched else out[0]


def classified(model: ModelVersion, outputs: Feeds, counts: dict[str, int]) -> Feeds:
    """``outputs`` with those named in ``counts`` replaced by their classifications."""
    if not counts:
        return outputs
    replaced = dict(outputs)
    for name, count in counts.items():
        replaced[name] = class_strings(outputs[name], count, model.labels, model.batched)
    return replaced
