"""Request bodies: read whole under a size limit, decompressed when the client compressed them."""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import Request

from app.errors import BadRequest, ClientDisconnected, PayloadTooLarge, UnsupportedMediaType

#: Content-Encoding values accepted, and zlib's window bits for each.
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Compressed bodies larger than this are inflated on a worker thread, not on the event loop.
INLINE_INFLATE_BYTES = 64 * 1024


def header(request: Request, name: str) -> str | None:
    """The first ``name`` header's value, as ``request.headers.get`` gives it.

    Without building the request's headers mapping, which costs more than this scan on the
    hot inference paths.
    """
    key = name.lower().encode("latin-1")
    for found, value in request.scope["headers"]:
        if found == key:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` bytes.

    A body sent with ``Content-Encoding: gzip`` or ``deflate`` is decompressed, and its
    decompressed size is held to the same limit (a compression bomb is a 413, never a
    growth of memory); another encoding is a 415.
    """
    encoding = header(request, "content-encoding")
    if encoding is not None:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            encoding = None
        elif encoding not in ENCODINGS:
            raise UnsupportedMediaType(
                f"Content-Encoding {encoding[:40]} is not supported: send gzip, deflate or "
                "an uncompressed body"
            )
    declared = header(request, "content-length")
    if declared is not None:
        # The HTTP parser has checked it: digits only, no larger than a 64-bit length.
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not an integer") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit}")
    body = await _receive(request, limit)
    if encoding is None:
        return body
    if len(body) <= INLINE_INFLATE_BYTES:
        return inflate(body, encoding, limit)
    return await asyncio.to_thread(inflate, body, encoding, limit)


async def _receive(request: Request, limit: int) -> bytes:
    # Read from ``receive`` directly: most bodies arrive in one message.
    receive = request.receive
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # The client's doing, not a server fault (nobody will read this answer anyway).
            raise ClientDisconnected("the client disconnected before sending the whole body")
        chunk: bytes = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """Decompress ``data``, never producing more than ``limit`` bytes (413 beyond)."""
    wbits = ENCODINGS[encoding]
    try:
        return _inflate(data, wbits, limit)
    except zlib.error as exc:
        if encoding == "deflate":
            # Some clients send raw deflate data without the zlib wrapper.
            try:
                return _inflate(data, -zlib.MAX_WBITS, limit)
            except zlib.error:
                pass
        raise BadRequest(f"the {encoding} body cannot be decompressed: {exc}") from None


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the decompressed request body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise BadRequest("the compressed body is truncated")
    return out
