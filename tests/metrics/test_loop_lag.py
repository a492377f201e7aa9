"""The event-loop lag gauge sees a loop held by blocking work, and starts anew when read."""

from __future__ import annotations

import asyncio
import time

from app.metrics.loop_lag import LoopLag


def test_a_blocked_loop_shows_as_lag() -> None:
    lag = LoopLag()

    async def run() -> None:
        watching = asyncio.create_task(lag.watch(interval=0.02))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # blocking work on the loop
        await asyncio.sleep(0.05)
        watching.cancel()

    asyncio.run(run())
    assert lag.take() >= 0.2
    assert lag.take() == 0.0
