"""Request ids: the client's when it is sane, else a new unique one (every front end's)."""

from __future__ import annotations

import itertools
import os
import re
import secrets

# An id from the client is kept when it is 1-128 of these characters: enough for UUIDs,
# ULIDs, base64 and trace headers, and nothing that could split or forge a log line.
SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._~:;,=+/@-]{1,128}")


class RequestIds:
    """Unique request ids: a random prefix per process, then a counter (32 hex digits).

    As unique as random ids across processes and restarts, at a fraction of their cost.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new prefix and counter (a forked child must not repeat its parent's ids)."""
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


# One per process, renewed in a forked child: the counter is what keeps ids unique.
_request_ids = RequestIds()
os.register_at_fork(after_in_child=_request_ids.reset)


def request_id(given: bytes | None) -> str:
    """``given`` (a client's id) when it is sane, else a new unique id."""
    if given is not None and SANE_REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return _request_ids.new()
