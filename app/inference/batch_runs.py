"""The runs of a dynamic batch, on the session pool's thread.

A batch of several requests (or of one, when every run is padded to a fixed size) is merged
along dim 0 into one run, and the outputs are split back by rows. A merged run that fails
is retried request by request, so that a bad request fails alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.registry.model import Feeds
from app.registry.session_pool import SessionPool

log = logging.getLogger(__name__)


class Queued(Protocol):
    """What a run needs of a queued request."""

    @property
    def feeds(self) -> Feeds: ...
    @property
    def outputs(self) -> list[str]: ...
    @property
    def rows(self) -> int: ...


@dataclass(slots=True)
class Outcome:
    """One request's share of a batch: its outputs or its error, when its run started and
    how long the run computed."""

    outputs: Feeds | None
    error: BaseException | None
    started: float
    computed: float


@dataclass(frozen=True, slots=True)
class MergedRuns:
    """Runs batches on ``pool``; ``pad_rows``: every run is padded with zero rows to this
    many (one shape for GPU kernels); ``labels``: model and version, for the log."""

    pool: SessionPool
    inputs: Sequence[str]
    pad_rows: int | None
    labels: tuple[str, str]

    def execute(
        self, batch: Sequence[Queued], names: list[str]
    ) -> tuple[list[Outcome], list[tuple[int, float]]]:
        """Run a batch (merged if it has several requests); the outcomes, and each run's
        rows and seconds."""
        runs: list[tuple[int, float]] = []
        if len(batch) > 1 or self.pad_rows is not None:
            started = time.perf_counter()
            try:
                merged = self._run_merged(batch, names, runs)
            except Exception as exc:  # onnxruntime raises several unrelated types
                log.warning(
                    "model %s v%s: a batch of %d requests failed (%s); running them one by one",
                    *self.labels, len(batch), str(exc).splitlines()[0] if str(exc) else exc,
                )  # fmt: skip
            else:
                return [Outcome(out, None, started, runs[0][1]) for out in merged], runs
        outcomes: list[Outcome] = []
        for entry in batch:
            started = time.perf_counter()
            try:
                results, seconds = self.pool.run_blocking(entry.feeds, entry.outputs)
            except Exception as exc:
                outcomes.append(Outcome(None, exc, started, 0.0))
                continue
            runs.append((entry.rows, seconds))
            outcomes.append(
                Outcome(dict(zip(entry.outputs, results, strict=True)), None, started, seconds)
            )
        return outcomes, runs

    def _run_merged(
        self, batch: Sequence[Queued], names: list[str], runs: list[tuple[int, float]]
    ) -> list[Feeds]:
        rows = sum(e.rows for e in batch)
        padding = max(0, (self.pad_rows or 0) - rows)
        feeds = {
            n: np.concatenate(
                [e.feeds[n] for e in batch]
                + ([zero_rows(batch[0].feeds[n], padding)] if padding else [])
            )
            for n in self.inputs
        }
        results, seconds = self.pool.run_blocking(feeds, names)
        for name, array in zip(names, results, strict=True):
            if array.ndim == 0 or array.shape[0] != rows + padding:
                raise ValueError(
                    f"output '{name}' has {array.shape[0] if array.ndim else 0} rows for a "
                    f"batch of {rows + padding}; the model does not keep rows apart"
                )
        runs.append((rows, seconds))
        split: list[Feeds] = []
        offset = 0
        by_name = dict(zip(names, results, strict=True))
        for entry in batch:
            end = offset + entry.rows
            split.append({n: by_name[n][offset:end] for n in entry.outputs})
            offset = end
        return split


def zero_rows(like: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows of zeros (empty strings for text) shaped like the rows of ``like``."""
    shape = (count, *like.shape[1:])
    if like.dtype.kind == "O":
        return np.full(shape, "", dtype=np.object_)
    return np.zeros(shape, dtype=like.dtype)
