"""Queue timeouts and client deadlines over gRPC, against a model with one session.

A busy call holds that session in an endless run (the probe model loops as often as its
``spin`` input says) until it is cancelled, which terminates the run. Every call sent
meanwhile certainly waits; the tests check what becomes of it by status and counts, never
by how long anything took.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.grpc.probes import FOREVER, BusyCall, expected_y, model_metric, probe_inputs, status
from tests.http_probes import wait_for
from tests.onnx_models import probe, write_model
from tests.server import RunningServer

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    # One session and no batching: a second call waits for the first to finish.
    write_model(root, "probe", probe(), config={"instances": {"count": 1}})
    with RunningServer(root, log_path=root.parent / "server.log") as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        yield client


def count(server: RunningServer, name: str, **labels: str) -> float:
    return model_metric(server, name, "probe", **labels)


def executions(server: RunningServer) -> float:
    return count(server, "onnx_serve_execution_count_total")


def failures(server: RunningServer, reason: str) -> float:
    return count(server, "onnx_serve_request_failure_total", protocol="grpc", reason=reason)


def test_timeout_parameter_bounds_the_wait_for_a_session(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    runs = executions(server)
    timeouts = failures(server, "timeout")
    with ThreadPoolExecutor(1) as threads, BusyCall(server, "probe") as busy:
        code, message = status(lambda: client.infer("probe", probe_inputs(X), timeout=1000))
        assert code == "DEADLINE_EXCEEDED", message
        assert "timeout of 1000 us" in message
        assert failures(server, "timeout") == timeouts + 1
        # 0 is no limit: this one waits for the busy run and runs once that is cancelled.
        patient = threads.submit(
            client.infer, "probe", probe_inputs(X), timeout=0, client_timeout=60
        )
        wait_for(lambda: count(server, "onnx_serve_inflight_requests") == 2, "it to wait")
        busy.cancel()
        np.testing.assert_allclose(patient.result().as_numpy("y"), expected_y(X))
    # Only the patient call ran: the timed-out one never did, the busy one was terminated.
    assert executions(server) == runs + 1


@pytest.mark.parametrize("timeout_us", [None, 600_000_000], ids=["no-timeout", "long-timeout"])
def test_a_waiting_call_past_its_deadline_leaves_the_queue(
    server: RunningServer, client: grpcclient.InferenceServerClient, timeout_us: int | None
) -> None:
    runs = executions(server)
    with BusyCall(server, "probe") as busy:
        gone = busy.disconnected()
        code, message = status(
            lambda: client.infer("probe", probe_inputs(X), timeout=timeout_us, client_timeout=1.0)
        )
        assert code == "DEADLINE_EXCEEDED", message
        # The server counts the call's client as gone, not as a fault of its own.
        wait_for(lambda: busy.disconnected() == gone + 1, "the late call to be counted")
        assert failures(server, "internal") == 0
        assert count(server, "onnx_serve_inflight_requests") == 1
    # Once the session is free, the call that left does not run after all.
    result = client.infer("probe", probe_inputs(X), client_timeout=30)
    np.testing.assert_allclose(result.as_numpy("y"), expected_y(X))
    assert executions(server) == runs + 1


def test_a_running_call_past_its_deadline_frees_its_session(
    server: RunningServer, client: grpcclient.InferenceServerClient
) -> None:
    gone = failures(server, "client_disconnected")
    code, message = status(
        lambda: client.infer("probe", probe_inputs(X, spin=FOREVER), client_timeout=1.0)
    )
    assert code == "DEADLINE_EXCEEDED", message
    wait_for(lambda: failures(server, "client_disconnected") == gone + 1, "the call to be gone")
    # Its endless run was terminated: the only session serves the next call.
    result = client.infer("probe", probe_inputs(X), client_timeout=30)
    np.testing.assert_allclose(result.as_numpy("y"), expected_y(X))
    assert failures(server, "internal") == 0
