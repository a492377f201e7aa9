"""A request's context: built by the front end that received it, passed down as an argument."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Protocol

from app.registry.model import Disconnected

REST = "rest"
GRPC = "grpc"


@dataclass(frozen=True, slots=True)
class Phases:
    """When the steps of one answered inference happened: ``time.perf_counter()`` instants
    and the runner's measured seconds. Statistics and traces are both made from these."""

    #: The data plane took the request (before decoding its inputs).
    started: float
    #: Its inputs were decoded and validated (images decoded and preprocessed).
    prepared: float
    #: Seconds it waited for a session or a batch.
    queued: float
    #: Seconds of the session run that computed it.
    computed: float
    #: The runner handed its outputs back.
    ran: float
    #: Its answer was encoded.
    encoded: float


class RequestTrace(Protocol):
    """The trace of one request (``app.tracing``); absent from a context when tracing is off."""

    def phases(self, model: str, version: str, rows: int, phases: Phases) -> None:
        """Record the steps of the request's inference as spans of its trace."""


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
    # The rest by keyword only: the fields are many and several take None.
    _: KW_ONLY
    #: Longest wait in a queue, in microseconds (0: none; None: the model's or server's
    #: default). The front end sets it from a header or deadline; a request's own
    #: ``timeout`` parameter replaces it.
    timeout_us: int | None = None
    #: Returns once the client has gone away (None: the front end cannot tell).
    disconnected: Disconnected | None = None
    #: Set by the data plane when the request waited for its model to load (a cold start);
    #: the front ends say so in a response header or trailing metadata.
    cold_start: bool = False
    #: The request's trace, when tracing is on (its W3C trace context came in with it or
    #: was started by the front end).
    trace: RequestTrace | None = None
