"""Dynamic batching: requests queued for one model version share session runs.

Requests whose inputs have the same dtypes and the same shapes after the batch dimension are
concatenated along dim 0, run once, and the outputs are split back by rows. A request is
dispatched as soon as an instance is free; only a request that arrived while every instance
was busy may be held, until it is ``max_queue_delay_us`` old, for the batch to fill up. A
merged run that fails is retried request by request, so a bad request fails alone.

Everything here runs on the event loop; the runs themselves (app/inference/batch_runs.py) run on
the pool's threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from app.errors import ClientDisconnected, ModelNotReady, QueueFull, QueueTimeout, ServingError
from app.inference.batch_runs import MergedRuns, Outcome
from app.inference.failures import runtime_error
from app.metrics import Metrics
from app.registry.config import DynamicBatchingConfig
from app.registry.model import (
    Disconnected,
    Feeds,
    ModelVersion,
    RunContext,
    RunResult,
    padded_batch_size,
)
from app.registry.session_pool import SessionPool

log = logging.getLogger(__name__)

# A queued request watches its client only once it has waited this long: watching (a task
# that awaits the connection's end) cost more loop time than the rest of a request's way
# through the queue, and in a busy queue most requests wait less.
WATCH_QUEUED_AFTER = 0.05


@dataclass(eq=False, slots=True)
class _Pending:
    """One request in the queue; compared and hashed by identity."""

    feeds: Feeds
    outputs: list[str]
    rows: int
    key: tuple[object, ...]
    future: asyncio.Future[RunResult]
    enqueued: float
    under_load: bool
    timer: asyncio.TimerHandle | None = None
    dispatched: bool = False
    #: Returns once the client has gone; awaited by ``watcher`` after a while in the queue.
    disconnected: Disconnected | None = None
    watcher: asyncio.Task[None] | None = None

    def unwatch(self) -> None:
        """Stop the timer and the watch of the client: the request leaves the queue."""
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


class DynamicBatcher:
    """The queue of one model version in front of its session pool."""

    def __init__(
        self,
        pool: SessionPool,
        metrics: Metrics,
        *,
        model: str,
        version: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        max_batch_size: int,
        config: DynamicBatchingConfig,
        default_timeout_us: int = 0,
        pad_rows: int | None = None,
        warmed: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("dynamic batching needs a model with a batch dimension")
        self._pool = pool
        self._metrics = metrics
        self._labels = (model, version)
        self._depth_gauge = metrics.queue_depth.labels(model, version)
        self._inputs = tuple(input_names)
        self._outputs = tuple(output_names)
        self.max_batch_size = max_batch_size
        self.max_queue_size = config.max_queue_size
        self._delay = config.max_queue_delay_us / 1e6
        self._preferred = sorted({s for s in config.preferred_batch_sizes if s <= max_batch_size})
        self._target = self._preferred[-1] if self._preferred else max_batch_size
        self._timeout_us = config.timeout_us or default_timeout_us
        self._slots = pool.size
        self._queue: deque[_Pending] = deque()
        self._running = 0
        self._hold: asyncio.TimerHandle | None = None
        #: Seconds a request waits before the watch of its client starts.
        self.watch_after = WATCH_QUEUED_AFTER
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._run_seconds = 0.0
        #: Every run is padded with zero rows to this many (one shape for GPU kernels).
        self._merged_runs = MergedRuns(pool, self._inputs, pad_rows, self._labels)
        #: The model ran on its warm-up inputs at load (see ``runtime_error``).
        self.warmed = warmed

    @property
    def depth(self) -> int:
        """Requests waiting in the queue now."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Session runs in flight now."""
        return self._running

    async def run(
        self, feeds: Feeds, outputs: list[str], rows: int, context: RunContext
    ) -> RunResult:
        """``submit`` as a ``Runner``: every failure becomes a ``ServingError``."""
        try:
            return await self.submit(
                feeds,
                outputs,
                rows,
                timeout_us=context.timeout_us,
                disconnected=context.disconnected,
            )
        except Exception as exc:
            raise runtime_error(exc, self.warmed) from None

    async def submit(
        self,
        feeds: Feeds,
        outputs: list[str],
        rows: int,
        *,
        timeout_us: int | None = None,
        disconnected: Disconnected | None = None,
    ) -> RunResult:
        """Queue one validated request and wait for its share of a batch run.

        ``timeout_us`` (0: none) bounds the time in the queue, else the model's or server's
        default applies; ``disconnected`` returning drops the request while it is queued
        (watched once it has waited ``watch_after`` seconds).
        """
        if self._closed:
            raise ModelNotReady("this model version was unloaded; retry the request")
        if len(self._queue) >= self.max_queue_size:
            raise QueueFull(
                f"model '{self._labels[0]}' has {len(self._queue)} requests queued, the most "
                "it holds; retry later",
                retry_after=self._retry_after(),
            )
        loop = asyncio.get_running_loop()
        entry = _Pending(
            feeds,
            outputs,
            rows,
            tuple((feeds[n].dtype.str, feeds[n].shape[1:]) for n in self._inputs),
            loop.create_future(),
            time.perf_counter(),
            under_load=self._running >= self._slots or bool(self._queue),
            disconnected=disconnected,
        )
        self._queue.append(entry)
        timeout = self._timeout_us if timeout_us is None else timeout_us
        if timeout > 0:
            entry.timer = loop.call_later(timeout / 1e6, self._expire, entry, timeout)
        if disconnected is not None and self._sweep is None:
            self._sweep = loop.call_later(self.watch_after, self._watch_waiting)
        self._schedule()
        try:
            return await entry.future
        except asyncio.CancelledError:
            self._drop(entry)
            raise

    async def close(self) -> None:
        """Fail whatever is still queued (the pool is retired) and stop taking requests."""
        self._closed = True
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._queue:
            entry = self._queue.popleft()
            self._settle_error(entry, ModelNotReady("this model version was unloaded"))
        self._depth_gauge.set(0)

    # ---- queue ----------------------------------------------------------------------------

    def _watch_waiting(self) -> None:
        """Watch the clients of the requests that have waited ``watch_after``; come back
        while any is yet to be watched (one timer for the queue, not one a request)."""
        self._sweep = None
        now = time.perf_counter()
        later = False
        for entry in self._queue:
            if entry.disconnected is None or entry.watcher is not None:
                continue
            if now - entry.enqueued < self.watch_after:
                later = True
                continue
            entry.watcher = asyncio.ensure_future(self._leave_when_gone(entry, entry.disconnected))
        if later and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.watch_after, self._watch_waiting)

    async def _leave_when_gone(self, entry: _Pending, disconnected: Disconnected) -> None:
        try:
            await disconnected()
        except Exception:  # a failed watch means the connection is unusable too
            pass
        entry.watcher = None
        if self._remove(entry) and not entry.future.done():
            entry.future.set_exception(
                ClientDisconnected("the client disconnected while its request was queued")
            )

    def _remove(self, entry: _Pending) -> bool:
        """Take a request that has not run out of the queue; False if it is not there."""
        if entry.dispatched:
            return False
        try:
            self._queue.remove(entry)
        except ValueError:
            return False
        entry.unwatch()
        self._depth_gauge.set(len(self._queue))
        self._schedule()
        return True

    def _drop(self, entry: _Pending) -> None:
        """Take a request that nobody waits for out of the queue (a no-op once it runs)."""
        if self._remove(entry) and not entry.future.done():
            entry.future.cancel()

    def _expire(self, entry: _Pending, timeout_us: int) -> None:
        entry.timer = None
        if not self._remove(entry) or entry.future.done():
            return
        waited_ms = (time.perf_counter() - entry.enqueued) * 1000
        entry.future.set_exception(
            QueueTimeout(
                f"request waited {waited_ms:.0f} ms in the queue of model '{self._labels[0]}', "
                f"past its timeout of {timeout_us / 1000:g} ms"
            )
        )

    def _retry_after(self) -> float:
        """Seconds until the queue has likely moved on: its runs at the recent pace."""
        runs = len(self._queue) / max(1, self.max_batch_size) + 1
        return max(1.0, runs * self._run_seconds / self._slots)

    # ---- dispatch -------------------------------------------------------------------------

    def _schedule(self) -> None:
        """Start batches while an instance is free and requests wait."""
        while self._running < self._slots and self._queue:
            batch = self._next_batch()
            if batch is None:
                break
            self._launch(batch)
        self._depth_gauge.set(len(self._queue))

    def _next_batch(self) -> list[_Pending] | None:
        """Take the oldest request and those that can join it, or None to hold them."""
        head = self._queue[0]
        picked = [head]
        rows = head.rows
        if rows < self.max_batch_size:
            for i in range(1, len(self._queue)):
                entry = self._queue[i]
                if entry.key != head.key:
                    continue
                if rows + entry.rows > self.max_batch_size:
                    break
                picked.append(entry)
                rows += entry.rows
                if rows == self.max_batch_size:
                    break
        if self._preferred and len(picked) > 1:
            picked, rows = _cut_to_preferred(picked, self._preferred)
        if self._delay and head.under_load and not self._closed and rows < self._target:
            release = head.enqueued + self._delay
            if time.perf_counter() < release:
                self._hold_until(release)
                return None
        if len(picked) == 1:
            self._queue.popleft()
        else:
            taken = set(picked)
            self._queue = deque(e for e in self._queue if e not in taken)
        return picked

    def _hold_until(self, release: float) -> None:
        if self._hold is not None:
            return
        delay = max(0.0, release - time.perf_counter())
        self._hold = asyncio.get_running_loop().call_later(delay, self._release_hold)

    def _release_hold(self) -> None:
        self._hold = None
        self._schedule()

    def _launch(self, batch: list[_Pending]) -> None:
        if self._hold is not None:
            # Whatever was held is going now; the next hold starts from the next head.
            self._hold.cancel()
            self._hold = None
        wanted = {name for entry in batch for name in entry.outputs}
        names = [name for name in self._outputs if name in wanted]
        for entry in batch:
            entry.dispatched = True
            entry.unwatch()
        try:
            future = self._pool.submit(self._merged_runs.execute, batch, names)
        except ServingError as exc:
            for entry in batch:
                self._settle_error(entry, exc)
            return
        self._running += 1
        future.add_done_callback(partial(self._finished, batch))

    def _finished(
        self,
        batch: list[_Pending],
        future: asyncio.Future[tuple[list[Outcome], list[tuple[int, float]]]],
    ) -> None:
        self._running -= 1
        error = future.exception()
        if error is not None:
            for entry in batch:
                self._settle_error(entry, error)
        else:
            outcomes, runs = future.result()
            for rows, seconds in runs:
                self._metrics.executed(*self._labels, rows, seconds)
                self._run_seconds = (
                    seconds if not self._run_seconds else (0.8 * self._run_seconds + 0.2 * seconds)
                )
            for entry, outcome in zip(batch, outcomes, strict=True):
                if entry.future.done():
                    continue
                if outcome.error is not None:
                    entry.future.set_exception(outcome.error)
                else:
                    assert outcome.outputs is not None
                    queued = max(0.0, outcome.started - entry.enqueued)
                    entry.future.set_result((outcome.outputs, queued, outcome.computed))
        if not self._closed:
            self._schedule()

    def _settle_error(self, entry: _Pending, error: BaseException) -> None:
        entry.unwatch()
        if not entry.future.done():
            entry.future.set_exception(error)


def _cut_to_preferred(picked: list[_Pending], preferred: list[int]) -> tuple[list[_Pending], int]:
    """The longest prefix whose rows are a preferred batch size, else all of ``picked``."""
    best = len(picked)
    total = 0
    sums: list[int] = []
    for entry in picked:
        total += entry.rows
        sums.append(total)
    wanted = set(preferred)
    for i in range(len(sums) - 1, -1, -1):
        if sums[i] in wanted:
            best = i + 1
            break
    return picked[:best], sums[best - 1]


def batcher_for(
    model: ModelVersion, metrics: Metrics, default_timeout_us: int = 0
) -> DynamicBatcher | None:
    """A batcher when the model's config enables dynamic batching and it has a batch dim."""
    config = model.config.dynamic_batching
    if config is None or not config.enabled or not model.batched:
        return None
    pad_rows = padded_batch_size(model.config, model.max_batch_size, model.provider)
    return DynamicBatcher(
        model.pool,
        metrics,
        model=model.name,
        version=str(model.version),
        input_names=[s.name for s in model.inputs],
        output_names=model.output_names(),
        # Padded runs merge no more rows than the padded shape holds.
        max_batch_size=model.max_batch_size if pad_rows is None else pad_rows,
        config=config,
        default_timeout_us=default_timeout_us,
        pad_rows=pad_rows,
        warmed=model.config.warmup.enabled,
    )
