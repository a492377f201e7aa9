"""The interactive documentation works as a first contact: every request example in the
OpenAPI schema answers 2xx against the bundled models, management routes declare their key,
operation ids are the service's own, and no status is listed that the route never sends."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.api.openapi import OPERATION_IDS
from tests.conftest import ROOT
from tests.integration.conftest import MANAGEMENT_KEY
from tests.server import RunningServer

PATH_VALUES = {"model_name": "digits", "model_version": "1"}
SEVEN_PNG = (ROOT / "docs" / "seven.png").read_bytes()


@pytest.fixture(scope="module")
def schema(sample_server: RunningServer) -> dict[str, Any]:
    r = httpx.get(f"{sample_server.url}/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, by_method in schema["paths"].items()
        for method, operation in by_method.items()
    ]


def json_examples(schema: dict[str, Any], content: dict[str, Any]) -> list[Any]:
    found = [content["example"]] if "example" in content else []
    found += [e["value"] for e in content.get("examples", {}).values()]
    ref = content.get("schema", {}).get("$ref", "")
    if ref:
        found += schema["components"]["schemas"][ref.rpartition("/")[2]].get("examples", [])
    return found


def test_every_request_example_answers_2xx(
    schema: dict[str, Any], sample_server: RunningServer
) -> None:
    posted = 0
    auth = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    for method, path, operation in operations(schema):
        content = operation.get("requestBody", {}).get("content", {})
        url = sample_server.url + path.format(**PATH_VALUES)
        for example in json_examples(schema, content.get("application/json", {})):
            r = httpx.request(method, url, json=example, headers=auth)
            assert 200 <= r.status_code < 300, (path, example, r.text)
            assert "7" in r.text  # each example is a 7 (drawn, or seven.png)
            posted += 1
        form = content.get("multipart/form-data", {}).get("example")
        if form is not None:
            files = [("file", ("seven.png", SEVEN_PNG, "image/png")) for _ in form["file"]]
            fields = {k: str(v) for k, v in form.items() if k != "file"}
            r = httpx.request(method, url, data=fields, files=files, headers=auth)
            assert 200 <= r.status_code < 300, (path, form, r.text)
            assert r.json()["predictions"][0][0]["label"] == "7"
            posted += 1
    assert posted >= 8


def test_management_routes_declare_their_key(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerKey"]["description"],
    }
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    management = [
        (m, p, o) for m, p, o in operations(schema) if p.startswith(("/models", "/v2/repository"))
    ]
    assert len(management) == 7
    for _, path, operation in management:
        assert operation["security"] == [{"bearerKey": []}, {"apiKeyHeader": []}], path
    infer = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert {} in infer["security"]  # the inference key is optional (a server setting)


def test_operation_ids_are_the_services_own(schema: dict[str, Any]) -> None:
    ids = [(m, p, o["operationId"]) for m, p, o in operations(schema)]
    assert {(m, p) for m, p, _ in ids} == set(OPERATION_IDS)
    assert len({i for _, _, i in ids}) == len(ids)
    for method, path, operation_id in ids:
        assert not operation_id.endswith(f"_{method}"), (path, operation_id)


def test_no_status_is_listed_that_is_never_sent(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        statuses = set(operation["responses"])
        if method == "get":
            # No body is read: nothing is too large, nothing waits in a queue.
            assert not statuses & {"413", "415", "504"}, path
        if "422" in statuses:
            # Only invalid model files and configs are 422 (FastAPI's validation never runs).
            assert path in ("/models", "/v2/repository/models/{model_name}/load"), path
        ref = str(operation["responses"].get("422", {}))
        assert "HTTPValidationError" not in ref
    assert "HTTPValidationError" not in schema["components"]["schemas"]
