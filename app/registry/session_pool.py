"""A pool of onnxruntime sessions for one model version, run off the event loop."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import onnxruntime as ort

from app.errors import ModelNotReady

Feeds = dict[str, np.ndarray]
T = TypeVar("T")


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
        #: The pool's sessions until it is retired (then empty, so they can be freed).
        self.sessions: tuple[ort.InferenceSession, ...] = tuple(sessions)
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix=label)
        self._active = 0
        self._lock = threading.Lock()
        self._drained = threading.Event()
        self._drained.set()
        self._retired = False
        self._closed = False
        self._busy = 0

    @property
    def active(self) -> int:
        """Runs submitted and not yet finished."""
        return self._active

    @property
    def idle(self) -> bool:
        """True when some session is not running (a new run would start at once)."""
        return self._busy < self.size

    def run_blocking(
        self, feeds: Feeds, outputs: list[str] | None
    ) -> tuple[list[np.ndarray], float]:
        """Run on a free session in the calling thread; returns outputs and compute seconds."""
        session = self._free.get()
        self._busy += 1
        try:
            start = time.perf_counter()
            result = session.run(outputs, feeds)
            return result, time.perf_counter() - start
        finally:
            self._busy -= 1
            self._free.put(session)

    async def run(
        self, feeds: Feeds, outputs: list[str] | None
    ) -> tuple[list[np.ndarray], float, float]:
        """Run in the pool's executor; returns outputs, queue seconds and compute seconds."""
        self._enter()
        submitted = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            result, compute, started = await loop.run_in_executor(
                self._executor, self._timed, feeds, outputs
            )
            return result, started - submitted, compute
        finally:
            self._leave()

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
        self, feeds: Feeds, outputs: list[str] | None
    ) -> tuple[list[np.ndarray], float, float]:
        started = time.perf_counter()
        result, compute = self.run_blocking(feeds, outputs)
        return result, compute, started

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
            self._drained.clear()

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._drained.set()

    def retire(self, timeout: float | None = None) -> bool:
        """Refuse new runs, wait for in-flight ones (blocking), then free the sessions."""
        with self._lock:
            self._retired = True
        drained = self._drained.wait(timeout)
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=drained)
        self.sessions = ()
        while not self._free.empty():
            self._free.get_nowait()
        return drained
