"""A request's own queue timeout: the v2 parameter and the REST header."""

from __future__ import annotations

import pytest

from app.errors import BadRequest
from app.protocol.timeouts import timeout_header, timeout_parameter


@pytest.mark.parametrize("value", [-1, 1.5, "10", True])
def test_timeout_parameter_must_be_microseconds(value: object) -> None:
    with pytest.raises(BadRequest, match="non-negative integer"):
        timeout_parameter(value)
    assert timeout_parameter(None) is None
    assert timeout_parameter(250) == 250


@pytest.mark.parametrize("value", [b"-1", b"1.5", b"1_0", b"", b"9" * 19])
def test_timeout_header_must_be_microseconds(value: bytes) -> None:
    with pytest.raises(BadRequest, match="X-Request-Timeout-Us"):
        timeout_header(value)
    assert timeout_header(None) is None
    assert timeout_header(b" 250 ") == 250
