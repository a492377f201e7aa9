"""Step threads are reused once idle; an abandoned step keeps its own; the watchdog
terminates runs at their deadlines and forgets cancelled ones."""

from __future__ import annotations

import threading
import time

import onnxruntime as ort

from app.registry.step_threads import StepThreads, Watchdog
from tests.http_probes import wait_for


def test_idle_threads_take_the_next_steps_and_busy_ones_are_not_shared() -> None:
    steps = StepThreads("test-step")
    seen: list[int] = []
    done = threading.Event()

    def job() -> None:
        seen.append(threading.get_ident())
        done.set()

    for _ in range(5):
        done.clear()
        steps.start("job", job)
        assert done.wait(10)
        wait_for(lambda: steps.running() == 0, "the step to finish")
    assert len(set(seen)) == 1  # one thread served all five steps, one after the other

    # A step that does not end (an abandoned one) keeps its thread: the next gets another.
    release = threading.Event()
    steps.start("stuck", lambda: release.wait(10) and None)
    wait_for(lambda: any(t.name == "test-step: stuck" for t in threading.enumerate()))
    done.clear()
    steps.start("job", job)
    assert done.wait(10)
    assert seen[-1] != seen[0]  # the idle thread took the stuck step
    wait_for(lambda: steps.running() == 1, "the second step to finish")
    release.set()
    wait_for(lambda: steps.running() == 0, "both steps to finish")


def test_the_watchdog_terminates_runs_at_their_deadlines_only() -> None:
    watchdog = Watchdog()
    late, cancelled = ort.RunOptions(), ort.RunOptions()
    watchdog.watch(time.monotonic() + 0.05, late)
    entry = watchdog.watch(time.monotonic() + 0.05, cancelled)
    watchdog.cancel(entry)
    wait_for(lambda: late.terminate, "the run's termination")
    time.sleep(0.1)  # past the cancelled one's deadline: it stays untouched
    assert not cancelled.terminate
