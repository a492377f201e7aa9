"""Fixtures for tests against real server processes."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

from tests.conftest import SAMPLE_MODELS
from tests.server import RunningServer

MANAGEMENT_KEY = "test-management-key"


def load_sample_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_samples", SAMPLE_MODELS / "build_samples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits the sample model never saw: images [N,1,8,8] in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    _, held = load_sample_builder().digits_split(digits.target)
    images = (digits.images[held] / 16.0).astype(np.float32)[:, np.newaxis]
    return images, digits.target[held]


@pytest.fixture(scope="module")
def sample_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on the bundled models/ with a management key."""
    log = tmp_path_factory.mktemp("log") / "server.log"
    with RunningServer(
        SAMPLE_MODELS, env={"ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY}, log_path=log
    ) as server:
        yield server
