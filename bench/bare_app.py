"""The HTTP ceiling: a bare ASGI app that reads the body and answers a fixed small JSON.

It does what any server must (parse the request, read the body, write an answer) and
nothing else, so its requests per second under the server's uvicorn flags bound what an
endpoint of onnx-serve could reach on the same machine.
"""

from __future__ import annotations

from typing import Any

# About the size of the MLP's v2 answer.
BODY = (
    b'{"model_name":"mlp","model_version":"1","outputs":[{"name":"y","datatype":"FP32",'
    b'"shape":[1,8],"data":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}]}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
