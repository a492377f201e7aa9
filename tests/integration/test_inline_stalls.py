"""Models whose cost a request's values steer never run on the event loop.

Both models here run in microseconds on warm-up zeros, which once made them run inline:
``loop_in_function`` hides a Loop (trip count from an input) in a model-local function,
``hann`` makes a window as long as its input's value. A request that makes them slow must
not stall the server: liveness is probed while it runs, and the event loop's lag gauge read.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.hostile_models import hann_window, loop_in_function
from tests.http_probes import metric
from tests.integration.attacks import LivenessProbe
from tests.onnx_models import write_model
from tests.server import RunningServer

LAG = "onnx_serve_event_loop_lag_seconds"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("models")
    write_model(root, "looping", loop_in_function())
    write_model(root, "hann", hann_window())
    with RunningServer(root) as running:
        yield running


def looping(trips: int) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "n", "shape": [1], "datatype": "INT64", "data": [trips]},
        ]
    }


def test_a_loop_in_a_function_runs_off_the_event_loop(server: RunningServer) -> None:
    ok = httpx.post(server.url + "/v2/models/looping/infer", json=looping(3))
    assert ok.status_code == 200, ok.text
    metric(server.url, LAG)  # a scrape starts a new measurement
    with LivenessProbe(server) as probe:
        # Seconds of looping (inline, this stalled every client for as long); the client
        # gives up after one, and its run is stopped.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v2/models/looping/infer", json=looping(3_000_000),
                       timeout=1.5)  # fmt: skip
        # Alternating slow and fast requests cannot keep it inline either.
        for trips in (3, 300_000, 3, 300_000, 3):
            assert (
                httpx.post(
                    server.url + "/v2/models/looping/infer", json=looping(trips), timeout=60
                ).status_code
                == 200
            )
    assert not probe.failures, probe.failures
    # Inline, the first request alone held the loop for ten seconds.
    assert probe.worst < 2.0, probe.worst
    assert metric(server.url, LAG) < 2.0


def test_a_window_sized_by_a_value_runs_off_the_event_loop(server: RunningServer) -> None:
    metric(server.url, LAG)
    with LivenessProbe(server) as probe:
        for _ in range(2):
            # 50 million points: most of a second of work (inline, of stall) each.
            r = httpx.post(
                server.url + "/v2/models/hann/infer",
                json={"inputs": [{"name": "size", "shape": [], "datatype": "INT64",
                                  "data": [50_000_000]}]},
                timeout=60,
            )  # fmt: skip
            assert r.status_code == 200, r.text
    assert not probe.failures, probe.failures
    assert probe.worst < 2.0, probe.worst
    assert metric(server.url, LAG) < 0.5
