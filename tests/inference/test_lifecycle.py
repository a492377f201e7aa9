"""The server state both front ends share: readiness, drain and requests in flight."""

from __future__ import annotations

import asyncio

from app.inference.lifecycle import InFlightRequests, ServerState


def test_in_flight_requests_wait_idle() -> None:
    async def scenario() -> None:
        inflight = InFlightRequests()
        assert await inflight.wait_idle(0)
        inflight.enter()
        assert not await inflight.wait_idle(0.01)
        waiter = asyncio.create_task(inflight.wait_idle(30))
        await asyncio.sleep(0)
        inflight.leave()
        assert await waiter
        assert inflight.count == 0

    asyncio.run(scenario())


def test_shutting_down_tells_its_listeners_once() -> None:
    state = ServerState()
    heard: list[str] = []
    state.on_shutdown.append(lambda: heard.append("down"))
    state.ready = True
    assert state.serving
    state.shut_down()
    state.shut_down()
    assert not state.serving
    assert heard == ["down"]
