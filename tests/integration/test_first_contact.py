"""What a new user meets first: the README's examples, run as written against a real server
on the bundled models, and the answers to a wrong media type or a HEAD probe.

The README's shell and Python blocks are taken from the file itself (only the address is
changed to the test server's), so an example that stops printing what the README says fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.server import RunningServer

README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```(sh|python|json)\n(.*?)```", re.DOTALL)


def blocks(kind: str) -> list[str]:
    return [body for found, body in BLOCK.findall(README) if found == kind]


def commands(block: str) -> list[str]:
    """The commands of a shell block, continuation lines joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def localized(text: str, server: RunningServer) -> str:
    return text.replace("localhost:8000", server.host_port).replace(
        "localhost:8001", server.grpc_address
    )


def shell(command: str, server: RunningServer, cwd: str = ".") -> str:
    done = subprocess.run(
        ["bash", "-c", localized(command, server)],
        cwd=ROOT / cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_the_first_shell_example_answers_as_the_readme_says(sample_server: RunningServer) -> None:
    block = next(b for b in blocks("sh") if "/predict" in b and "inputs" in b)
    ready, metadata, predict = commands(block)
    assert json.loads(shell(ready, sample_server)) == {"ready": True}
    assert json.loads(shell(metadata, sample_server))["name"] == "digits"
    outputs = json.loads(shell(predict, sample_server))["outputs"]
    # "a hand-drawn 7: its probabilities (and logits) are largest at index 7"
    assert int(np.argmax(outputs["probabilities"])) == 7
    assert int(np.argmax(outputs["logits"])) == 7


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_python_examples_print_seven(sample_server: RunningServer, protocol: str) -> None:
    module = "tritonclient.grpc" if protocol == "grpc" else "tritonclient.http"
    (code,) = [b for b in blocks("python") if f"import {module} " in b]
    assert "# [7]" in code
    done = subprocess.run(
        [sys.executable, "-c", localized(code, sample_server)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[7]\n"


@needs_curl
def test_the_image_examples_answer_as_the_readme_says(sample_server: RunningServer) -> None:
    shown = json.loads(next(b for b in blocks("json") if '"predictions"' in b))
    first, *others = [b for b in blocks("sh") if "seven.png" in b]
    cd, upload = commands(first)
    assert cd == "cd docs"
    answer = json.loads(shell(upload, sample_server, "docs"))
    assert answer["predictions"][0][0] == shown["predictions"][0][0] | {
        "score": pytest.approx(shown["predictions"][0][0]["score"], abs=1e-4)
    }
    assert [p["index"] for p in answer["predictions"][0]] == [
        p["index"] for p in shown["predictions"][0]
    ]
    for block in others:
        for command in commands(block):
            top = json.loads(shell(command, sample_server, "docs"))["predictions"][0][0]
            assert top["label"] == "7", command


@pytest.mark.parametrize(
    ("content_type", "hint"),
    [("text/plain", ""), ("application/x-www-form-urlencoded", "curl -d")],
)
def test_a_body_that_is_not_json_is_415(
    sample_server: RunningServer, content_type: str, hint: str
) -> None:
    body = '{"model": "digits", "inputs": [[0]]}'
    for path in ("/predict", "/v2/models/digits/predict/image"):
        r = httpx.post(
            sample_server.url + path, content=body, headers={"content-type": content_type}
        )
        assert r.status_code == 415, r.text
        assert content_type in r.json()["error"] and hint in r.json()["error"]


@pytest.mark.parametrize(
    "path", ["/", "/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"]
)
def test_head_on_health_routes(sample_server: RunningServer, path: str) -> None:
    got = httpx.get(sample_server.url + path, headers={"accept": "application/json"})
    head = httpx.head(sample_server.url + path, headers={"accept": "application/json"})
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(got.content))
    assert head.headers["x-request-id"]
    missing = httpx.head(sample_server.url + "/v2/models/nope/ready")
    assert missing.status_code == 404 and missing.content == b""
