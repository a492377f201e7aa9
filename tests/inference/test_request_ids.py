"""Request ids: the client's when sane, else new and unique."""

from __future__ import annotations

from app.inference.request_ids import request_id


def test_a_sane_client_id_is_kept_and_others_replaced() -> None:
    assert request_id(b"abc") == "abc"
    assert request_id(b"a\nb") != "a\nb"
    fresh = {request_id(None) for _ in range(1000)}
    assert len(fresh) == 1000
    assert all(len(i) == 32 for i in fresh)
