"""The request middleware on a bare ASGI app: ids, the 500 fallback and in-flight counting."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from app.api.middleware import RequestContextMiddleware
from app.inference.lifecycle import ServerState


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("a bug")


def middleware(inner: object, shutting_down: bool = False) -> RequestContextMiddleware:
    state = ServerState()
    state.shutting_down = shutting_down
    return RequestContextMiddleware(inner, state=state)  # type: ignore[arg-type]


async def request(
    app: RequestContextMiddleware, method: str, path: str, **kwargs: object
) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        return await http.request(method, path, **kwargs)  # type: ignore[arg-type]


def test_unhandled_error_is_a_500_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    r = asyncio.run(
        request(middleware(failing_app), "GET", "/boom", headers={"X-Request-ID": "bug-1"})
    )
    assert r.status_code == 500
    assert r.json() == {"error": "internal server error"}
    assert r.headers["x-request-id"] == "bug-1"
    errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert errors and errors[0].exc_info is not None
    assert "GET /boom" in errors[0].getMessage()


def test_draining_refuses_all_but_probes() -> None:
    async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = middleware(ok_app, shutting_down=True)
    refused = asyncio.run(request(app, "POST", "/predict"))
    live = asyncio.run(request(app, "GET", "/v2/health/live"))
    assert refused.status_code == 503
    assert "shutting down" in refused.json()["error"]
    assert refused.headers["connection"] == "close"
    assert live.status_code == 200
    assert live.headers["connection"] == "close"
