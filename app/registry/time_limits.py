"""Time limits for model-level steps: loads, warm-up runs and the test run of an upload.

A model's warm-up can be made to never end (a Loop whose trip count is a constant of the
graph, say), and building its sessions cannot be interrupted at all. So every such step runs
on a thread of its own (``app/registry/step_threads.py``; never one of the event loop's
executor, which requests need), within a time limit:

- a session run (warm-up, test run) gets a ``Deadline``: onnxruntime is told to terminate
  it (``RunOptions.terminate``, checked between nodes and loop iterations) when the time is
  up, and the step fails with ``StepTimedOut``;
- the whole step is awaited for at most its limit; a step still running then is left to
  finish on its thread (whatever it built is thrown away) and the caller gets
  ``StepTimedOut`` at once.

The model is then UNAVAILABLE with the reason (or its upload refused) and the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import onnxruntime as ort

from app.errors import InvalidModel, ServingError, hide_paths
from app.registry.step_threads import StepThreads, Watchdog
from app.settings import Settings

if TYPE_CHECKING:
    from app.registry.config import ModelConfig
    from app.registry.model import ModelVersion

T = TypeVar("T")

#: The threads model-level steps run on (named ``onnx-serve-model-step: <what>``).
STEPS = StepThreads("onnx-serve-model-step")
#: Terminates the session runs of steps at their deadlines.
WATCHDOG = Watchdog()


class StepTimedOut(InvalidModel):
    """A model-level step ran past its time limit."""

    reason = "timed_out"


class Deadline:
    """A point in time after which the session runs started under it are terminated."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        # The clock starts with the first run: building sessions comes before and has a
        # limit of its own (the step's).
        self._at: float | None = None
        self._runs: set[ort.RunOptions] = set()
        self._lock = threading.Lock()
        self._expired = False

    def remaining(self) -> float:
        if self._at is None:
            self._at = time.monotonic() + self.seconds
        return max(0.0, self._at - time.monotonic())

    def error(self) -> StepTimedOut:
        return StepTimedOut(
            f"{self.what} took longer than {self.seconds:g} s and was stopped "
            "(ONNX_SERVE_MODEL_WARMUP_TIMEOUT_SECONDS)"
        )

    def expire(self) -> None:
        """Terminate every run under this deadline now (and any started later)."""
        with self._lock:
            self._expired = True
            for options in self._runs:
                options.terminate = True

    @contextlib.contextmanager
    def options(self) -> Iterator[ort.RunOptions]:
        """``RunOptions`` for session runs that are terminated at the deadline; a run that
        fails after it raises ``StepTimedOut``."""
        options = ort.RunOptions()
        # A terminated run is reported as a timeout; onnxruntime need not log it as well.
        options.log_severity_level = 4
        with self._lock:
            if self._expired or self.remaining() == 0:
                raise self.error()
            self._runs.add(options)
        watched = WATCHDOG.watch(time.monotonic() + self.remaining(), options)
        try:
            yield options
        except Exception:
            if options.terminate:
                raise self.error() from None
            raise
        finally:
            WATCHDOG.cancel(watched)
            with self._lock:
                self._runs.discard(options)

    def run(self, session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run(None, feeds)``, terminated at the deadline (``StepTimedOut``)."""
        with self.options() as options:
            result: list[np.ndarray] = session.run(None, feeds, options)
        return result


def no_deadline(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A session run without a time limit (for callers outside the server)."""
    result: list[np.ndarray] = session.run(None, feeds)
    return result


async def run_step(
    what: str,
    seconds: float,
    step: Callable[..., T],
    *args: Any,
    stops: Deadline | None = None,
    on_late_result: Callable[[T], None] | None = None,
    **kwargs: Any,
) -> T:
    """``step(*args, **kwargs)`` on a thread of its own, for at most ``seconds``.

    A step still running then raises ``StepTimedOut`` here (the runs under ``stops`` are
    terminated); when it ends later its result is handed to ``on_late_result`` (to release
    what it built) on its thread. The message of the step's ``ServingError`` leaves without
    the server's paths.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    abandoned = threading.Event()

    def settle(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def work() -> None:
        try:
            result = step(*args, **kwargs)
        except BaseException as exc:  # handed to the awaiting task
            if not abandoned.is_set():
                loop.call_soon_threadsafe(settle, future.set_exception, exc)
            return
        if abandoned.is_set():
            if on_late_result is not None:
                on_late_result(result)
            return
        loop.call_soon_threadsafe(settle, future.set_result, result)

    STEPS.start(what, work)
    try:
        return await asyncio.wait_for(asyncio.shield(future), seconds)
    except TimeoutError:
        abandoned.set()
        if stops is not None:
            stops.expire()
        raise StepTimedOut(
            f"{what} took longer than {seconds:g} s and was abandoned "
            "(ONNX_SERVE_MODEL_LOAD_TIMEOUT_SECONDS)"
        ) from None
    except ServingError as exc:
        exc.message = hide_paths(exc.message)
        exc.args = (exc.message, *exc.args[1:])
        raise
    except asyncio.CancelledError:
        abandoned.set()
        if stops is not None:
            stops.expire()
        raise


def _retire(model: ModelVersion) -> None:
    model.pool.retire(0)


async def load_in_time(
    settings: Settings,
    what: str,
    config: ModelConfig,
    build: Callable[[Deadline], ModelVersion],
) -> ModelVersion:
    """``build(deadline)`` (the load of ``what``, a model version) within the settings' limits.

    Warm-up runs get ``model_warmup_timeout_seconds`` (``deadline`` terminates them); the whole
    load gets ``model_load_timeout_seconds`` (plus the optimisation's own limit when the
    version is optimised at load). A version that loads too late is retired at once.
    """
    seconds = settings.model_load_timeout_seconds + settings.model_warmup_timeout_seconds
    if config.optimize is not None:
        seconds += config.optimize.timeout_seconds
    deadline = Deadline(settings.model_warmup_timeout_seconds, f"the warm-up of {what}")
    return await run_step(
        f"loading {what}", seconds, build, deadline, stops=deadline, on_late_result=_retire
    )


def steps_running() -> int:
    """Model-level steps still running on their threads (abandoned ones included)."""
    return STEPS.running()
