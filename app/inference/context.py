"""A request's context: built by the front end that received it, passed down as an argument."""

from __future__ import annotations

from dataclasses import dataclass

from app.registry.model import Disconnected

REST = "rest"
GRPC = "grpc"


@dataclass(slots=True)
class RequestContext:
    """What the serving layers need to know of one request besides its data.

    Each front end builds one per request; nothing below reads request state from anywhere
    else. It satisfies the registry's ``RunContext``.
    """

    #: The request's id (the client's, when sane; else a new unique one).
    request_id: str
    #: The front end it came in over: ``REST`` or ``GRPC`` (a metrics label).
    protocol: str
    #: Longest wait in a queue, in microseconds (0: none; None: the model's or server's
    #: default). The front end sets it from a header or deadline; a request's own
    #: ``timeout`` parameter replaces it.
    timeout_us: int | None = None
    #: Returns once the client has gone away (None: the front end cannot tell).
    disconnected: Disconnected | None = None
    #: Set by the data plane when the request waited for its model to load (a cold start);
    #: the front ends say so in a response header or trailing metadata.
    cold_start: bool = False
