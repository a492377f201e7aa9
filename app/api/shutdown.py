"""Graceful shutdown: on SIGTERM stop taking work, let in-flight requests finish, then stop.

The servers keep listening while they drain, so probes see readiness turn false at once and
new requests get a clear 503 (gRPC: UNAVAILABLE) instead of a refused connection. Once the
in-flight requests of both front ends are done (or the grace period is over) the signal is
passed on to the HTTP server's own handler, which closes the connections and runs the app's
shutdown (the gRPC server stops and the sessions are closed there).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from app.inference.lifecycle import ServerState

log = logging.getLogger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def drain_on_signals(state: ServerState, grace_seconds: float) -> Callable[[], None]:
    """Put a drain in front of the current SIGTERM/SIGINT handlers; returns an undo.

    The first signal shuts ``state`` down (readiness false, new requests refused) and waits
    up to ``grace_seconds`` for the in-flight requests before passing the signal on; a second
    signal passes on at once. Does nothing outside the main thread, where signal handlers
    cannot be set (an app served by a test client, for instance).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Handler] = {sig: signal.getsignal(sig) for sig in DRAIN_SIGNALS}
    drains: set[asyncio.Task[None]] = set()
    inflight = state.inflight

    def pass_on(sig: int) -> None:
        handler = previous[sig]
        if callable(handler):
            handler(sig, None)
        else:
            # No Python handler before ours: let the signal do what it did without us.
            signal.signal(sig, handler)
            signal.raise_signal(sig)

    async def drain(sig: int) -> None:
        if not await inflight.wait_idle(grace_seconds):
            log.warning(
                "grace period of %.1fs is over with %d requests in flight; stopping anyway",
                grace_seconds, inflight.count,
            )  # fmt: skip
        else:
            log.info("drained: no request in flight")
        pass_on(sig)

    def on_signal(sig: int, _: FrameType | None) -> None:
        if state.shutting_down:
            pass_on(sig)
            return
        # Set here, in the handler, so that the very next request already sees it.
        state.shut_down()

        def start() -> None:
            log.info(
                "%s: draining %d in-flight requests (grace %.1fs); new requests are refused",
                signal.Signals(sig).name, inflight.count, grace_seconds,
            )  # fmt: skip
            task = loop.create_task(drain(sig))
            drains.add(task)
            task.add_done_callback(drains.discard)

        # The handler interrupts whatever task runs; a fresh context keeps that request's id
        # out of the drain's log lines.
        loop.call_soon_threadsafe(start, context=contextvars.Context())

    for sig in DRAIN_SIGNALS:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal and handler is not None:
                signal.signal(sig, handler)

    return restore
