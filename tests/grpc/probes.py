"""Helpers for driving a live server over gRPC with tritonclient: inputs, statuses, and a
call that holds a model's only session until it is cancelled."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.http_probes import metric, wait_for
from tests.server import RunningServer

# Loop trips of the probe model (tests/onnx_models.py) for a run of hours: it only ends
# when its call is cancelled, which terminates the run.
FOREVER = 1_000_000_000


def infer_input(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    """``array`` as tritonclient sends an input (raw_input_contents)."""
    tensor = grpcclient.InferInput(
        name, list(array.shape), datatype or np_to_triton_dtype(array.dtype)
    )
    tensor.set_data_from_numpy(array)
    return tensor


def probe_inputs(x: np.ndarray, spin: int = 0, idx: int = 0) -> list[grpcclient.InferInput]:
    """Inputs of the probe model: ``y`` = 2x + row sums; ``spin`` loop trips first."""
    rows = x.shape[0]
    return [
        infer_input("x", x.astype(np.float32)),
        infer_input("idx", np.full((rows, 1), idx, np.int64)),
        infer_input("spin", np.full((rows, 1), spin, np.int64)),
    ]


def expected_y(x: np.ndarray) -> np.ndarray:
    return np.asarray(2 * x + x.sum(axis=1, keepdims=True), dtype=np.float32)


def status(call: Callable[[], Any]) -> tuple[str, str]:
    """The gRPC status name and message ``call`` ends with ("OK", "" when it succeeds)."""
    try:
        call()
    except InferenceServerException as exc:
        code = exc.status() or ""
        return code.removeprefix("StatusCode."), exc.message() or ""
    return "OK", ""


def model_metric(server: RunningServer, name: str, model: str, **labels: str) -> float:
    return metric(server.url, name, model=model, version="1", **labels)


class BusyCall:
    """A gRPC call that holds ``model``'s only session in an endless run until ``cancel``
    (or the block ends); the cancellation terminates the run and frees the session."""

    def __init__(self, server: RunningServer, model: str) -> None:
        self.server = server
        self.model = model
        self.client = grpcclient.InferenceServerClient(server.grpc_address)
        self.results: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self.gone_before = self.disconnected()
        before = model_metric(server, "onnx_serve_inflight_requests", model)
        self.call = self.client.async_infer(
            model,
            probe_inputs(np.zeros((1, 4)), spin=FOREVER),
            callback=lambda result, error: self.results.put((result, error)),
        )
        wait_for(
            lambda: model_metric(server, "onnx_serve_inflight_requests", model) > before,
            f"the busy call to {model} to be in flight",
        )
        self.active = True

    def disconnected(self) -> float:
        return model_metric(
            self.server,
            "onnx_serve_request_failure_total",
            self.model,
            protocol="grpc",
            reason="client_disconnected",
        )

    def cancel(self, *, wait: bool = True) -> None:
        """Cancel the call; with ``wait``, return once the server has counted its client
        gone (not while the server drains: the cancellation may let it exit)."""
        if not self.active:
            return
        self.active = False
        self.call.cancel()
        if wait:
            wait_for(
                lambda: self.disconnected() > self.gone_before,
                "the busy call to be counted as gone",
            )
        self.client.close()

    def __enter__(self) -> BusyCall:
        return self

    def __exit__(self, *_: object) -> None:
        self.cancel()
