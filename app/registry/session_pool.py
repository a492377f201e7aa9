"""A pool of onnxruntime sessions for one model version, run off the event loop."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from app.errors import ModelNotReady, QueueFull, QueueTimeout

Feeds = dict[str, np.ndarray]
T = TypeVar("T")
log = logging.getLogger(__name__)


class RunAbandoned(Exception):
    """A run left the queue because its client went away (nobody would read the result)."""


# An inline run that takes more CPU than this sends its pool's runs to its threads for good.
# Runs are timed on the wall clock (free); one that takes this long has the next
# ``CPU_TIMED_RUNS`` runs timed on the thread's CPU clock (a system call), which preemptions
# by other processes, not the model's doing, do not inflate. Every run of that window is
# timed, so runs that alternate slow and fast cannot slip through.
INLINE_SLOW_RUN = 0.002
CPU_TIMED_RUNS = 64

# Runs that started at once watch their client only after this many seconds.
WATCH_RUNS_AFTER = 0.05


class _ClientWatch:
    """Waits for a request's client to leave; its run, if any, is then told to terminate."""

    def __init__(self, abandoned: Callable[[], Awaitable[object]], options: ort.RunOptions) -> None:
        self._abandoned = abandoned
        self._options = options
        self._timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.gone = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._watch())

    def start_later(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._timer = loop.call_later(delay, self.start)

    async def _watch(self) -> None:
        try:
            await self._abandoned()
        except Exception:  # a failed watch means the connection is unusable too
            pass
        self.gone = True
        # onnxruntime checks this between nodes (and loop iterations): the run stops soon.
        self._options.terminate = True

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            self.task.cancel()


class SessionPool:
    """``len(sessions)`` sessions behind an executor with exactly that many threads.

    The executor's own queue is the wait for a free session: a task only starts when a
    thread (and so a session) is free. ``retire`` closes the pool once in-flight runs end.
    """

    def __init__(self, sessions: Sequence[ort.InferenceSession], label: str) -> None:
        if not sessions:
            raise ValueError("a session pool needs at least one session")
        self._free: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for session in sessions:
            self._free.put(session)
        self.size = len(sessions)
        self.label = label
        #: The pool's sessions until it is retired (then empty, so they can be freed).
        self.sessions: tuple[ort.InferenceSession, ...] = tuple(sessions)
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix=label)
        self._active = 0
        self._lock = threading.Lock()
        # Set once the pool is retired and nothing is active (only then does anyone wait).
        self._drained = threading.Event()
        self._retired = False
        self._closed = False
        #: Run on the event loop itself: set at load for models whose runs take microseconds
        #: (a hand-off to a thread would cost more than the run), cleared by a slow run.
        self.inline = False
        # Inline runs still to time on the CPU clock, after one slow on the wall clock.
        self._cpu_timed = 0
        # Runs submitted through ``run`` and not finished (touched on the event loop only).
        self._runs = 0

    def run_blocking(
        self,
        feeds: Feeds,
        outputs: list[str] | None,
        options: ort.RunOptions | None = None,
    ) -> tuple[list[np.ndarray], float]:
        """Run on a free session in the calling thread; returns outputs and compute seconds."""
        session = self._free.get()
        try:
            start = time.perf_counter()
            result = session.run(outputs, feeds, options)
            return result, time.perf_counter() - start
        finally:
            self._free.put(session)

    async def run(
        self,
        feeds: Feeds,
        outputs: list[str] | None,
        *,
        queue_timeout: float | None = None,
        abandoned: Callable[[], Awaitable[object]] | None = None,
        max_waiting: int = 0,
    ) -> tuple[list[np.ndarray], float, float]:
        """Run in the pool's executor; returns outputs, queue seconds and compute seconds.

        The wait for a free session ends after ``queue_timeout`` seconds (QueueTimeout). When
        ``abandoned`` returns (the client went away) a waiting run leaves the queue and a run
        that has lasted ``WATCH_RUNS_AFTER`` seconds is terminated, freeing its session; both
        raise RunAbandoned. A run that has started is not bounded by ``queue_timeout``. With
        ``max_waiting`` requests already waiting for a session, a new one is refused
        (QueueFull, 503 with Retry-After; 0: no limit). When
        the caller's task is cancelled, its run is dropped or terminated alike.
        """
        if self.inline:
            return self._run_inline(feeds, outputs)
        if max_waiting and self._runs - self.size >= max_waiting:
            # Admission control: a wait that long helps nobody; the client retries later.
            raise QueueFull(
                f"{max_waiting} requests already wait for a session of this model",
                retry_after=1.0,
            )
        self._enter()
        submitted = time.perf_counter()
        # With a session free the run starts at once: nothing to bound, and its client is
        # only watched if it runs long (watching costs more than a short run).
        must_wait = self._runs >= self.size
        loop = asyncio.get_running_loop()
        options = ort.RunOptions()
        # A terminated run is reported as RunAbandoned; onnxruntime need not log it as well.
        options.log_severity_level = 4
        watch = _ClientWatch(abandoned, options) if abandoned is not None else None
        try:
            work = self._executor.submit(self._timed, feeds, outputs, options)
            self._runs += 1
            # Counted until the run itself ends, even when its caller stopped waiting.
            work.add_done_callback(lambda _: loop.call_soon_threadsafe(self._run_ended))
            # Cancelling this (the caller's task cancelled) also drops a run not yet started.
            future = asyncio.wrap_future(work)
            if watch is not None:
                if must_wait:
                    watch.start()
                else:
                    watch.start_later(loop, WATCH_RUNS_AFTER)
            if must_wait and (queue_timeout is not None or watch is not None):
                await self._wait_for_start(work, future, queue_timeout, watch)
            try:
                result, compute, started = await future
            except Exception:
                if watch is not None and watch.gone:
                    raise RunAbandoned("the client went away: its run was stopped") from None
                raise
            return result, started - submitted, compute
        except asyncio.CancelledError:
            # The caller's task was cancelled (a gRPC client cancelled, or its deadline
            # passed): nobody reads this run, so drop it if it waits, else stop it, and the
            # session is free again.
            work.cancel()
            options.terminate = True
            raise
        finally:
            if watch is not None:
                watch.stop()
            self._leave()

    def _run_inline(
        self, feeds: Feeds, outputs: list[str] | None
    ) -> tuple[list[np.ndarray], float, float]:
        # Nothing else runs while the loop is here, so a session is free: the wait is only
        # the time to take it (reported, as Triton's queue time, so that it is never a made-up 0).
        called = time.perf_counter()
        self._enter()
        timed = self._cpu_timed
        cpu = time.thread_time() if timed else 0.0
        try:
            result, compute = self.run_blocking(feeds, outputs)
        finally:
            self._leave()
        queued = max(0.0, time.perf_counter() - called - compute)
        if timed:
            self._cpu_timed = timed - 1
            cpu = time.thread_time() - cpu
            if cpu > INLINE_SLOW_RUN:
                # The model itself made this run slow: its runs go to its threads for good.
                self.inline = False
                log.warning(
                    "%s: a run took %.1f ms of CPU on the event loop; runs go to threads from "
                    "now on",
                    self.label, cpu * 1000,
                )  # fmt: skip
        elif compute > INLINE_SLOW_RUN:
            self._cpu_timed = CPU_TIMED_RUNS
        return result, queued, compute

    def _run_ended(self) -> None:
        self._runs -= 1

    async def _wait_for_start(
        self,
        work: Future[tuple[list[np.ndarray], float, float]],
        future: asyncio.Future[tuple[list[np.ndarray], float, float]],
        queue_timeout: float | None,
        watch: _ClientWatch | None,
    ) -> None:
        waiting: set[asyncio.Future[Any]] = {future}
        if watch is not None and watch.task is not None:
            waiting.add(watch.task)
        await asyncio.wait(waiting, timeout=queue_timeout, return_when=FIRST_COMPLETED)
        if future.done() or not work.cancel():
            return  # finished, or running: it completes (or is terminated if abandoned)
        future.cancel()
        if watch is not None and watch.gone:
            raise RunAbandoned("the client went away while its request waited for a session")
        raise QueueTimeout(
            f"no session was free within the timeout of {(queue_timeout or 0) * 1e6:.0f} us"
        )

    def submit(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Start ``fn(*args)`` on the pool's threads (it may call ``run_blocking``).

        Counted as in flight until it ends, like ``run``; the caller keeps at most ``size``
        of these running so that ``fn`` finds a free session at once.
        """
        self._enter()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except BaseException:
            self._leave()
            raise
        future.add_done_callback(lambda _: self._leave())
        return future

    def _timed(
        self, feeds: Feeds, outputs: list[str] | None, options: ort.RunOptions
    ) -> tuple[list[np.ndarray], float, float]:
        started = time.perf_counter()
        result, compute = self.run_blocking(feeds, outputs, options)
        return result, compute, started

    @property
    def in_use(self) -> int:
        """Requests holding the pool and runs in it now (0: idle; read on the event loop)."""
        return self._active

    def hold(self) -> None:
        """Count a request as in flight from lookup to response, so retiring waits for it."""
        self._enter()

    def release(self) -> None:
        """End a ``hold``."""
        self._leave()

    def _enter(self) -> None:
        with self._lock:
            # Once retired, only work of requests that already hold the pool may still run.
            if self._closed or (self._retired and self._active == 0):
                raise ModelNotReady("this model version was unloaded; retry the request")
            self._active += 1

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._retired:
                self._drained.set()

    def retire(self, timeout: float | None = None) -> bool:
        """Refuse new runs, wait for in-flight ones (blocking), then free the sessions."""
        with self._lock:
            self._retired = True
            if self._active == 0:
                self._drained.set()
        drained = self._drained.wait(timeout)
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=drained)
        self.sessions = ()
        while not self._free.empty():
            self._free.get_nowait()
        return drained
