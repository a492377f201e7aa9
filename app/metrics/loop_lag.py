"""How late the event loop runs: a timer's delay past its due time, watched all along.

Everything served in one process shares one event loop; work that holds it (a long inline
run, a large body parsed in place) delays every other request, probes included. A task sets
a timer every ``INTERVAL`` seconds and records how late it fires; the gauge
``onnx_serve_event_loop_lag_seconds`` shows the worst delay since the previous scrape.
"""

from __future__ import annotations

import asyncio

#: Seconds between two measurements.
INTERVAL = 0.1


class LoopLag:
    """The worst lateness of the loop's timers since it was last read."""

    def __init__(self) -> None:
        self._worst = 0.0

    def record(self, seconds: float) -> None:
        if seconds > self._worst:
            self._worst = seconds

    def take(self) -> float:
        """The worst lateness since the previous call (read at each scrape)."""
        worst, self._worst = self._worst, 0.0
        return worst

    async def watch(self, interval: float = INTERVAL) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            self.record(max(0.0, loop.time() - due))
