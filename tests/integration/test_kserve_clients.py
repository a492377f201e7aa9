"""KServe's own clients (``kserve`` package): v1 and v2 REST and v2 gRPC against a real server.

They run in a child process (``kserve_clients.py``): kserve's gRPC modules clash with
tritonclient's in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.server import RunningServer

SCRIPT = Path(__file__).with_name("kserve_clients.py")


def test_kserve_clients_live_ready_and_infer(sample_server: RunningServer) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), sample_server.url, sample_server.grpc_address],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout)
    v1, v2, grpc = answers["v1"], answers["v2"], answers["grpc"]
    assert v1["is_server_live"] is True and v1["is_model_ready"] is True
    assert v2["is_server_live"] and v2["is_server_ready"] and v2["is_model_ready"]
    assert v2["is_model_ready_unknown"] is False
    assert grpc["is_server_live"] and grpc["is_server_ready"] and grpc["is_model_ready"]
    # The script draws a "1": every client gets the same answer for it.
    (prediction,) = v1["predictions"]
    assert int(np.argmax(prediction["probabilities"])) == 1
    for outputs in (v2["outputs"], grpc["outputs"]):
        np.testing.assert_allclose(outputs["probabilities"][0], prediction["probabilities"], 1e-5)
        np.testing.assert_allclose(outputs["logits"][0], prediction["logits"], 1e-5)


def test_v1_lists_the_models(sample_server: RunningServer) -> None:
    r = httpx.get(f"{sample_server.url}/v1/models")
    assert r.status_code == 200, r.text
    assert r.json() == {"models": ["colors", "digits", "digits_cnn"]}
