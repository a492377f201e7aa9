"""Fuzz tests count what they generate; the counts are printed after the run."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.tried import counter_for, summary_hook


@pytest.fixture
def tried(request: pytest.FixtureRequest) -> Counter[str]:
    """This test's counts (cases, requests, answers by status), shown in the summary."""
    return counter_for(request)


pytest_terminal_summary = summary_hook("fuzz: what was tried", "tests/fuzz/")
