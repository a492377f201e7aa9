"""HEAD answered as GET without the body, for every GET route (probes use HEAD).

FastAPI's routes take only the methods they declare, so a HEAD to a health route would be a
405. HTTP defines HEAD as GET without the body: the request runs as a GET, its headers (the
GET body's Content-Length included) go out and its body is dropped.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Pure ASGI middleware with that one job."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        # A new scope: the server's own still says HEAD, so it sends no body either way.
        get = {**scope, "method": "GET"}
        await self.app(get, receive, send_headers_only)
        if "route" in get:
            scope["route"] = get["route"]  # for the metrics and traces of the request
