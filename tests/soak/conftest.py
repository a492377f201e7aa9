"""Soak tests count the requests they sent by kind and status; the counts print at the end."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.tried import counter_for, summary_hook


@pytest.fixture
def tried(request: pytest.FixtureRequest) -> Counter[str]:
    """This test's counts (requests by kind and status, cycles, resources), in the summary."""
    return counter_for(request)


pytest_terminal_summary = summary_hook("soak: what was tried", "tests/soak/")
