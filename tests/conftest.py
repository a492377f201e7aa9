"""Shared fixtures: the bundled models folder and a server factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server import RunningServer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_MODELS = ROOT / "models"

StartServer = Callable[..., RunningServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start servers with ``start_server(models_dir, env=..., args=...)``; all stop after."""
    servers: list[RunningServer] = []

    def start(models: Path, **kwargs: object) -> RunningServer:
        server = RunningServer(models, **kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
