"""Queue timeouts (server default, header, v2 parameter) and clients that leave.

The model has one session. A "busy" request holds it in a run that would last many minutes
(a Loop whose trip count is an input) until its client hangs up, which terminates the run.
So every request sent meanwhile certainly waits, and the tests check what happens to it by
status and execution counts, never by how long anything took.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.http_probes import metric, wait_for
from tests.onnx_models import looping, write_model
from tests.server import RunningServer

DEFAULT_TIMEOUT_US = 2000
# About half an hour of loop trips: the busy run only ends when its client leaves.
FOREVER = 100_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    # One session: a second request waits for the first to finish.
    write_model(root, "slow", looping(), config={"instances": {"count": 1}})
    env = {"ONNX_SERVE_DEFAULT_TIMEOUT_US": str(DEFAULT_TIMEOUT_US)}
    with RunningServer(root, env=env) as running:
        yield running


def body(trips: int, **parameters: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "inputs": [
            {"name": "n", "shape": [], "datatype": "INT64", "data": [trips]},
            {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": [1.0] * 4096},
        ]
    }
    if parameters:
        doc["parameters"] = parameters
    return doc


def count(server: RunningServer, name: str, **labels: str) -> float:
    return metric(server.url, name, model="slow", version="1", **labels)


def executions(server: RunningServer) -> float:
    return count(server, "onnx_serve_execution_count_total")


def dropped(server: RunningServer) -> float:
    return count(
        server, "onnx_serve_request_failure_total", protocol="rest", reason="client_disconnected"
    )


def inflight(server: RunningServer) -> float:
    return count(server, "onnx_serve_inflight_requests")


def send(server: RunningServer, doc: dict[str, object]) -> http.client.HTTPConnection:
    """Send a whole request with no queue timeout, without reading its answer."""
    host, port = server.host_port.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(
        "POST",
        "/v2/models/slow/infer",
        body=json.dumps(doc).encode(),
        headers={"Content-Type": "application/json", "X-Request-Timeout-Us": "0"},
    )
    return connection


class BusySession:
    """Holds the model's only session in an endless run until ``hang_up`` (or the block ends)."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.before = inflight(server)
        self.dropped = dropped(server)
        self.connection = send(server, body(FOREVER))
        wait_for(lambda: inflight(server) > self.before, "the busy request to be in flight")
        # One more round trip to the server: by then the busy request has taken the session.
        inflight(server)

    def hang_up(self) -> None:
        if self.connection.sock is not None:
            self.connection.close()
            # The watch on its client terminates the run: the session is free again.
            wait_for(lambda: dropped(self.server) > self.dropped, "the busy run to be terminated")

    def __enter__(self) -> BusySession:
        return self

    def __exit__(self, *_: object) -> None:
        self.hang_up()


def infer(server: RunningServer, doc: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(server.url + "/v2/models/slow/infer", json=doc, headers=headers, timeout=60)


def test_server_default_timeout_applies_to_a_waiting_request(server: RunningServer) -> None:
    before = executions(server)
    with BusySession(server):
        late = infer(server, body(0))
        assert late.status_code == 504, late.text
        assert "timeout" in late.json()["error"]
        # It left the queue: only the busy request is in flight.
        assert inflight(server) == 1
    # Neither the busy run (terminated) nor the timed-out one executed.
    assert executions(server) == before


def test_header_and_parameter_override_the_default(server: RunningServer) -> None:
    before = executions(server)
    with BusySession(server):
        impatient = infer(server, body(0, timeout=1), **{"X-Request-Timeout-Us": "0"})
        assert impatient.status_code == 504, impatient.text
        by_header = infer(server, body(0), **{"X-Request-Timeout-Us": "1"})
        assert by_header.status_code == 504, by_header.text
    with ThreadPoolExecutor(2) as threads, BusySession(server) as busy:
        # No limit, by header or by the v2 parameter (which wins over the header): these
        # wait for the busy run, and run once its client has left.
        patient = threads.submit(infer, server, body(0), **{"X-Request-Timeout-Us": "0"})
        by_parameter = threads.submit(
            infer, server, body(0, timeout=0), **{"X-Request-Timeout-Us": "1"}
        )
        wait_for(lambda: inflight(server) == 3, "both to wait for the busy session")
        busy.hang_up()
        for waited in (patient.result(), by_parameter.result()):
            assert waited.status_code == 200, waited.text
    assert executions(server) - before == 2


@pytest.mark.parametrize("value", ["-1", "1.5", "soon", "9" * 19])
def test_malformed_timeout_header_is_400(server: RunningServer, value: str) -> None:
    r = infer(server, body(0), **{"X-Request-Timeout-Us": value})
    assert r.status_code == 400, r.text
    assert "X-Request-Timeout-Us" in r.json()["error"]


def test_clients_that_leave_free_their_place_and_their_session(server: RunningServer) -> None:
    before_runs = executions(server)
    before_drops = dropped(server)
    with BusySession(server) as busy:
        waiting = [send(server, body(FOREVER)) for _ in range(3)]
        wait_for(lambda: inflight(server) == 4, "three requests to wait behind the busy one")
        # A moment to read their bodies and queue them; a client that leaves even earlier is
        # caught while its body is read (either way its request never runs).
        inflight(server)
        for connection in waiting:
            connection.close()
        wait_for(lambda: dropped(server) - before_drops == 3, "the three to leave the queue")
        assert inflight(server) == 1
        busy.hang_up()
    assert dropped(server) - before_drops == 4
    # The queue is empty and the session free: a request with a 1 us timeout does not wait.
    now = infer(server, body(10), **{"X-Request-Timeout-Us": "1"})
    assert now.status_code == 200, now.text
    assert executions(server) - before_runs == 1
    assert (
        count(server, "onnx_serve_request_failure_total", protocol="rest", reason="internal") == 0
    )
