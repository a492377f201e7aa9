"""The server's state shared by its front ends: ready, draining, requests in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class InFlightRequests:
    """How many requests are being served; a drain waits for the count to reach zero."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if ``timeout`` seconds passed first."""
        if self.count == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class ServerState:
    """Whether the server serves: ready once startup loading is done, until it drains.

    Every front end counts its requests in ``inflight`` and refuses new ones while
    ``shutting_down``; a drain (app/api/shutdown.py) waits for the count to reach zero.
    """

    def __init__(self) -> None:
        self.ready = False
        self.shutting_down = False
        self.inflight = InFlightRequests()
        #: Called once when shutting down starts (the gRPC health service listens).
        self.on_shutdown: list[Callable[[], None]] = []

    @property
    def serving(self) -> bool:
        """Ready and not shutting down (the readiness probes' answer)."""
        return self.ready and not self.shutting_down

    def shut_down(self) -> None:
        """Stop taking new requests from now on; those in flight may finish."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for listener in self.on_shutdown:
            listener()
