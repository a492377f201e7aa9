"""Counts of what fuzz and soak tests tried, printed in the run's terminal summary.

A passing test shows nothing of its work by default; these counts make the coverage of a
green run visible in CI output (cases generated, requests sent, answers by status).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

TRIED = pytest.StashKey[dict[str, Counter[str]]]()


def counter_for(request: pytest.FixtureRequest) -> Counter[str]:
    """The counter of the requesting test (created on first use)."""
    store = request.config.stash.setdefault(TRIED, {})
    return store.setdefault(request.node.nodeid, Counter())


def summary_hook(
    title: str, prefix: str
) -> Callable[[pytest.TerminalReporter, int, pytest.Config], None]:
    """A ``pytest_terminal_summary`` that prints the counts of tests under ``prefix``."""

    def pytest_terminal_summary(
        terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
    ) -> None:
        store = config.stash.get(TRIED, {})
        mine = {node: counts for node, counts in store.items() if node.startswith(prefix)}
        if not mine:
            return
        terminalreporter.section(title)
        total: Counter[str] = Counter()
        for node, counts in mine.items():
            total.update(counts)
            parts = ", ".join(f"{key}={value}" for key, value in sorted(counts.items()))
            terminalreporter.write_line(f"{node.removeprefix(prefix)}: {parts}")
        if len(mine) > 1:
            parts = ", ".join(f"{key}={value}" for key, value in sorted(total.items()))
            terminalreporter.write_line(f"total: {parts}")

    return pytest_terminal_summary
