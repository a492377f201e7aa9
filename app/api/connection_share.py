"""Each worker's fair share of the clients' HTTP connections, when several workers serve.

The kernel hands each new connection to one worker's listening socket by a hash of its
addresses (``SO_REUSEPORT``, see app/workers.py), so a client's few keep-alive connections
may all land on one worker while another idles: with 4 connections and 2 workers, one time
in 8. Each worker counts the connections that are sending it requests and writes the count
into a table that all the workers share (a small file each maps). A worker holding more than
its share (all of them over the number of workers, rounded up) answers the next request of
that many connections with ``Connection: close``; the client opens a new connection, which
the kernel hashes afresh. Once the spread is even nothing moves, so the spread settles
within a few rounds and costs a reconnect only while it is uneven.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import struct

#: The environment variable that tells a worker its table: ``<path>:<index>:<workers>``.
SHARE_ENV = "ONNX_SERVE_WORKER_SHARE"
#: Seconds between two counts; a connection that sent nothing for that long is idle.
PERIOD_SECONDS = 0.05
#: Rounds a worker waits after asking clients to reconnect, for them to do so.
SETTLE_ROUNDS = 1
SLOT = struct.Struct("=i")
#: The count of a worker not running (its slot is left out of the shares).
GONE = -1


def table_size(workers: int) -> int:
    return SLOT.size * workers


class ConnectionShare:
    """One worker's view of the table of busy connections per worker."""

    def __init__(self, path: str, index: int, workers: int) -> None:
        with open(path, "r+b") as table:
            self._table = mmap.mmap(table.fileno(), table_size(workers))
        self.index = index
        self.workers = workers
        # Clients (host, port) with a request in progress, and those seen this round.
        self._busy: set[object] = set()
        self._seen: set[object] = set()
        self._told: set[object] = set()
        #: Connections still to be asked to reconnect this round (read on every answer).
        self.to_close = 0
        self._settling = 0
        self._excess = 0

    @classmethod
    def from_environment(cls) -> ConnectionShare | None:
        """The share the supervisor gave this worker process, or None (one process)."""
        value = os.environ.get(SHARE_ENV)
        if not value:
            return None
        path, index, workers = value.rsplit(":", 2)
        return cls(path, int(index), int(workers))

    # ---- on the request path ---------------------------------------------------------------

    def enter(self, client: object) -> None:
        self._busy.add(client)

    def leave(self, client: object) -> None:
        self._busy.discard(client)
        self._seen.add(client)

    def should_close(self, client: object) -> bool:
        """Whether this answer asks its client to reconnect (once per connection)."""
        if client in self._told:
            return False
        self._told.add(client)
        self.to_close -= 1
        return True

    # ---- every round -----------------------------------------------------------------------

    def count(self) -> int:
        """Publish this worker's busy connections of the round; how many it holds too many."""
        mine = len(self._seen | self._busy)
        self._seen = set()
        self._told = set()
        SLOT.pack_into(self._table, self.index * SLOT.size, mine)
        if self._settling:
            self._settling -= 1
            self.to_close = 0
            return 0
        counts = [n for n in struct.unpack_from(f"={self.workers}i", self._table) if n >= 0]
        fair = -(-sum(counts) // len(counts))
        # Some slack with many connections, whose hashed spread is even enough.
        excess: int = max(0, mine - fair - fair // 8)
        # Acted on when two rounds agree: the other workers' counts may be a round old.
        confirmed = min(excess, self._excess)
        self._excess = excess
        self.to_close = confirmed
        if confirmed:
            self._settling = SETTLE_ROUNDS
            self._excess = 0
        return confirmed

    async def run(self) -> None:
        """Count every ``PERIOD_SECONDS`` until cancelled."""
        try:
            while True:
                await asyncio.sleep(PERIOD_SECONDS)
                self.count()
        finally:
            SLOT.pack_into(self._table, self.index * SLOT.size, GONE)


def create_table(path: str, workers: int) -> None:
    """Write a table for ``workers`` workers, none of them running yet, at ``path``."""
    with open(path, "wb") as table:
        table.write(SLOT.pack(GONE) * workers)


def clear_slot(path: str, index: int) -> None:
    """Mark a worker as gone (its connections went with it)."""
    with open(path, "r+b") as table:
        table.seek(index * SLOT.size)
        table.write(SLOT.pack(GONE))
