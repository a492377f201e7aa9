"""Schemathesis against every operation of the app's OpenAPI schema, on a live server.

Each operation gets valid and invalid requests generated from its schema (with its path
parameters sometimes set to real models, so that requests reach the model code), sent with the
management key. Checks: no 5xx, and every response conforms to the documented schema.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.main import create_app
from app.settings import Settings
from tests.conftest import SAMPLE_MODELS
from tests.onnx_models import identity, mlp, write_model
from tests.server import RunningServer

MANAGEMENT_KEY = "fuzz-management-key"
AUTH = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
# Examples per operation and generation mode (about 30 operations); FUZZ_EXAMPLES raises it.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# Names that exist on the server; destructive operations only ever name the sacrificial one.
SERVED = ("digits", "mlp", "text")
SACRIFICE = "victim"
DESTRUCTIVE = ("DELETE ", "/unload", "/load")
CHECKS = [not_a_server_error, response_schema_conformance]


@cache
def schema() -> Any:
    """The app's OpenAPI schema as schemathesis sees it (the routes, not a live server's)."""
    return schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def destructive(operation: Any) -> bool:
    return any(marker in operation.label for marker in DESTRUCTIVE)


def operations() -> list[Any]:
    """Every operation; unloads, then deletes, last, so that the others find the models."""
    found = [result.ok() for result in schema().get_all_operations()]
    return sorted(found, key=lambda op: (destructive(op), op.label.startswith("DELETE ")))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "operation" in metafunc.fixturenames:
        found = operations()
        metafunc.parametrize("operation", found, ids=[op.label for op in found])


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "server.log"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_log: Path) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(SAMPLE_MODELS / "digits", root / "digits")
    write_model(root, "mlp", mlp())
    write_model(root, "text", identity("BYTES", ["N", 2]))
    write_model(root, SACRIFICE, identity("FP32", ["N", 3]))
    env = {
        "ONNX_SERVE_MANAGEMENT_API_KEY": MANAGEMENT_KEY,
        "ONNX_SERVE_MAX_REQUEST_BYTES": str(1 << 20),
        "ONNX_SERVE_MAX_UPLOAD_BYTES": str(1 << 20),
    }
    with RunningServer(root, env=env, log_path=server_log) as running:
        yield running


def strategy(operation: Any) -> st.SearchStrategy[Any]:
    """Valid and invalid cases, some with the path naming a real model and version 1."""
    params = {p.name for p in operation.path_parameters}
    names = (SACRIFICE,) if destructive(operation) else SERVED
    fixed: list[dict[str, str]] = []
    if "model_name" in params:
        for name in names:
            fixed.append(
                {"model_name": name} | ({"model_version": "1"} if "model_version" in params else {})
            )
    choices = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        choices.append(operation.as_strategy(generation_mode=mode))
        choices.extend(
            operation.as_strategy(generation_mode=mode, path_parameters=p) for p in fixed
        )
    return st.one_of(choices)


def test_operation(server: RunningServer, operation: Any, tried: Counter[str]) -> None:
    session = requests.Session()

    @settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy(operation))
    def run(case: Any) -> None:
        tried["requests"] += 1
        response = case.call(base_url=server.url, session=session, headers=AUTH, timeout=30)
        tried[f"status {response.status_code}"] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    finally:
        session.close()


def test_every_operation_is_fuzzed() -> None:
    """The schema lists the endpoints this suite expects (a route missing from it is not fuzzed)."""
    labels = {op.label for op in operations()}
    for expected in (
        "POST /v2/models/{model_name}/infer",
        "POST /predict",
        "POST /models",
        "POST /v2/repository/models/{model_name}/load",
        "GET /metrics",
    ):
        assert expected in labels, sorted(labels)


def test_server_logged_no_unhandled_error(server: RunningServer, server_log: Path) -> None:
    """Runs after the fuzzing above: nothing it sent made the server log a traceback."""
    text = server_log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
