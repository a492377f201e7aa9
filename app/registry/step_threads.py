"""The threads that model-level steps run on, and the watch over their runs' deadlines.

A step (a load, an upload's checks) runs on a thread that no request needs, and may outlive
its time limit: building a session cannot be interrupted. Threads are kept for the next
step once their step is done (for ``IDLE_SECONDS``). What a thread allocates stays in its
malloc arena: with a fresh thread for every step, the loads of a churning repository spread
over many arenas, and the memory freed in one did not serve the next load (``bench/memory.py``:
the peak went 100 MiB above the memory budget, against 20 MiB with threads kept). A step
abandoned at its limit keeps its thread until it ends; the next step gets another.

One watchdog thread terminates session runs at their deadlines (a timer thread a run cost a
new thread for every warm-up run).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable

import onnxruntime as ort

#: Seconds an idle step thread waits for the next step before it ends.
IDLE_SECONDS = 30.0


class StepThreads:
    """Runs jobs each on a thread of its own, reusing idle threads."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._idle: list[_StepThread] = []
        self._busy = 0
        self._lock = threading.Lock()

    def start(self, what: str, job: Callable[[], None]) -> None:
        """Run ``job`` (which handles its own errors) on an idle thread, or a new one."""
        with self._lock:
            thread = self._idle.pop() if self._idle else None
            self._busy += 1
        if thread is None:
            thread = _StepThread(self)
            thread.start()
        thread.jobs.put((what, job))

    def running(self) -> int:
        """Jobs not finished (abandoned ones included)."""
        with self._lock:
            return self._busy

    def _done(self, thread: _StepThread) -> None:
        with self._lock:
            self._busy -= 1
            self._idle.append(thread)

    def _retire(self, thread: _StepThread) -> bool:
        """Whether an idle ``thread`` may end (no job was handed to it meanwhile)."""
        with self._lock:
            if thread in self._idle:
                self._idle.remove(thread)
                return True
            return False


class _StepThread(threading.Thread):
    def __init__(self, owner: StepThreads) -> None:
        super().__init__(name=f"{owner.prefix} (idle)", daemon=True)
        self.owner = owner
        self.jobs: queue.SimpleQueue[tuple[str, Callable[[], None]]] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            try:
                what, job = self.jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                if self.owner._retire(self):
                    return
                continue  # taken just now: its job is on the way
            self.name = f"{self.owner.prefix}: {what}"
            try:
                job()
            finally:
                self.name = f"{self.owner.prefix} (idle)"
                self.owner._done(self)


class Watchdog:
    """One thread that sets ``RunOptions.terminate`` of session runs at their deadlines."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: list[tuple[float, int, ort.RunOptions]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, at: float, options: ort.RunOptions) -> tuple[float, int, ort.RunOptions]:
        """Terminate the run of ``options`` at ``at`` (``time.monotonic()``) unless
        ``cancel`` is called with the returned handle first."""
        entry = (at, next(self._order), options)
        with self._changed:
            heapq.heappush(self._due, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="onnx-serve-run-deadlines", daemon=True
                )
                self._thread.start()
            self._changed.notify()
        return entry

    def cancel(self, entry: tuple[float, int, ort.RunOptions]) -> None:
        with self._changed:
            if entry in self._due:
                self._due.remove(entry)
                heapq.heapify(self._due)

    def _run(self) -> None:
        with self._changed:
            while True:
                if not self._due:
                    self._changed.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                heapq.heappop(self._due)[2].terminate = True
