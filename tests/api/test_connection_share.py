"""A worker's share of the connections: counted per round, the excess asked to reconnect."""

from __future__ import annotations

from pathlib import Path

from app.api.connection_share import SETTLE_ROUNDS, ConnectionShare, clear_slot, create_table


def shares(tmp_path: Path, workers: int = 2) -> list[ConnectionShare]:
    path = str(tmp_path / "table")
    create_table(path, workers)
    return [ConnectionShare(path, i, workers) for i in range(workers)]


def serve(share: ConnectionShare, clients: range) -> None:
    for port in clients:
        share.enter(("127.0.0.1", port))
        share.leave(("127.0.0.1", port))


def rounds(
    share: ConnectionShare,
    other: ConnectionShare,
    clients: range,
    count: int,
    others: range = range(0),
) -> int:
    """``count`` rounds of both workers serving ``clients`` and ``others``; ``share``'s last
    answer."""
    excess = 0
    for _ in range(count):
        serve(share, clients)
        serve(other, others)
        other.count()
        excess = share.count()
    return excess


def test_the_worker_over_its_share_asks_the_excess_to_reconnect(tmp_path: Path) -> None:
    first, second = shares(tmp_path)
    assert rounds(first, second, range(4), 1) == 0  # seen once: the other count may be old
    assert rounds(first, second, range(4), 1) == 2
    assert first.to_close == 2
    # Once per connection, however many answers it gets this round.
    assert first.should_close(("127.0.0.1", 0))
    assert not first.should_close(("127.0.0.1", 0))
    assert first.should_close(("127.0.0.1", 1))
    assert first.to_close == 0


def test_an_even_spread_moves_nothing(tmp_path: Path) -> None:
    first, second = shares(tmp_path)
    for _ in range(3):
        serve(first, range(3))
        serve(second, range(3, 5))
        assert first.count() == 0  # 3 of 5 is the rounded-up share
        assert second.count() == 0


def test_busy_connections_count_until_their_answer(tmp_path: Path) -> None:
    first, second = shares(tmp_path)
    for port in range(4):
        first.enter(("127.0.0.1", port))  # long requests: no answer within the round
    assert rounds(first, second, range(0), 2) == 2
    for _ in range(SETTLE_ROUNDS):
        assert rounds(first, second, range(0), 1) == 0  # for the clients to reconnect
    assert rounds(first, second, range(0), 2) == 2


def test_many_connections_get_some_slack(tmp_path: Path) -> None:
    first, second = shares(tmp_path)
    # 35 against a share of 32 and a slack of 4; then 40 against 32 + 4.
    assert rounds(first, second, range(35), 2, range(100, 129)) == 0
    assert rounds(first, second, range(40), 2, range(100, 124)) == 4


def test_a_gone_workers_slot_is_cleared(tmp_path: Path) -> None:
    first, second = shares(tmp_path)
    serve(second, range(6))
    second.count()
    clear_slot(str(tmp_path / "table"), 1)
    # Alone now: a share of everything, nothing to move.
    for _ in range(3):
        serve(first, range(10, 12))
        assert first.count() == 0
