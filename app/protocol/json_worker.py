"""``python -m app.protocol.json_worker``: decodes large JSON bodies for the server.

Reads frames from stdin and writes one answer frame for each to stdout. A frame is an
8-byte little-endian length and a pickle: a request is ``(function name, arguments)`` of
``app.protocol.json_bodies``; an answer is ``(ok, result or ServingError, resident bytes)``.
The worker trusts its parent only (pickles never come from a client).
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from app.errors import InferenceFailed, ServingError
from app.protocol import json_bodies

FRAME = struct.Struct("<Q")
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "v2_request": json_bodies.v2_request,
    "plain_document": json_bodies.plain_document,
}


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    data = stream.read(size)
    return data if len(data) == size else None


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    # Decoded objects hold no cycles: collections during a parse of millions of lists
    # would only multiply its time.
    gc.disable()
    # Beside a serving process: the event loop comes first.
    os.nice(10)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while (frame := read_frame(source)) is not None:
        name, args = pickle.loads(frame)
        answer: tuple[bool, Any, int]
        try:
            answer = (True, FUNCTIONS[name](*args), 0)
        except ServingError as exc:
            answer = (False, exc, 0)
        except Exception as exc:  # a decoder bug: reported, never a dead worker
            answer = (False, InferenceFailed(f"the body could not be decoded: {exc}"), 0)
        answer = (answer[0], answer[1], resident_bytes())
        write_frame(sink, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
        del answer
    return 0


if __name__ == "__main__":
    sys.exit(main())
