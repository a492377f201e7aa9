"""The data plane: look a model up, validate a request against it, run it, count it."""

from __future__ import annotations

from contextvars import ContextVar
from types import TracebackType

import numpy as np

from app.errors import BadRequest, InferenceFailed, ServingError
from app.inference.batching import ClientDisconnected, DynamicBatcher, disconnect_signal
from app.metrics import Metrics, RequestObservation
from app.protocol.v2 import RequestLimits
from app.registry.model import ModelVersion, TensorSpec
from app.registry.registry import ModelRegistry
from app.registry.session_pool import RunAbandoned

Tensors = dict[str, np.ndarray]

# The request's own queue timeout (microseconds) from a header, set by the API layer for the
# request's task; an explicit ``timeout_us`` (v2 ``parameters.timeout``) takes precedence.
requested_timeout_us: ContextVar[int | None] = ContextVar("requested_timeout_us", default=None)

# onnxruntime's error classes for bad inputs (as opposed to faults of the model or runtime).
_ORT_CLIENT_ERRORS = {"InvalidArgument", "InvalidGraph", "NotImplemented"}


def validate_inputs(model: ModelVersion, inputs: Tensors) -> int:
    """Check names, dtypes and shapes against the model; return the batch size (rows)."""
    specs = model.inputs
    if len(inputs) != len(specs):
        _check_names(model, inputs)
    batched = model.max_batch_size > 0
    rows: int | None = None
    for spec in specs:
        array = inputs.get(spec.name)
        if array is None:
            _check_names(model, inputs)
            raise BadRequest(f"input '{spec.name}' is missing")
        if array.dtype != spec.dtype:
            got = "BYTES" if array.dtype.kind in "OUS" else str(array.dtype)
            raise BadRequest(f"input '{spec.name}' must be {spec.datatype}, got {got}")
        shape = array.shape
        if len(shape) != len(spec.shape):
            raise _shape_error(spec, shape)
        for want, got in zip(spec.shape, shape, strict=True):
            if want != got and want != -1:
                raise _shape_error(spec, shape)
        if batched:
            if rows is None:
                rows = shape[0]
            elif shape[0] != rows:
                raise BadRequest("all inputs must have the same batch size (first dimension)")
    if rows is None:
        return 1
    if rows > model.max_batch_size:
        raise BadRequest(
            f"batch of {rows} is over the model's max_batch_size {model.max_batch_size}"
        )
    return rows


def _check_names(model: ModelVersion, inputs: Tensors) -> None:
    for name in inputs:
        if model.input(name) is None:
            expected = ", ".join(s.name for s in model.inputs)
            raise BadRequest(f"model '{model.name}' has no input '{name}' (inputs: {expected})")


def _shape_error(spec: TensorSpec, shape: tuple[int, ...]) -> BadRequest:
    return BadRequest(
        f"input '{spec.name}' has shape {list(shape)}, the model expects "
        f"{list(spec.shape)} (-1 is any size)"
    )


def output_names(model: ModelVersion, requested: list[str] | None) -> list[str]:
    """The outputs to compute: those requested (checked) or all of them."""
    if requested is None:
        return model.output_names()
    known = set(model.output_names())
    for name in requested:
        if name not in known:
            raise BadRequest(
                f"model '{model.name}' has no output '{name}' "
                f"(outputs: {', '.join(model.output_names())})"
            )
    return list(dict.fromkeys(requested))


def runtime_error(exc: Exception) -> ServingError:
    """Classify an onnxruntime exception as the client's mistake or a server fault."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if type(exc).__name__ in _ORT_CLIENT_ERRORS:
        return BadRequest(f"onnxruntime rejected the input: {message}")
    return InferenceFailed(f"inference failed: {message}")


class ModelRequest:
    """``with service.request(name, version) as (model, observation):`` (see ``request``).

    A class rather than a generator-based context manager: it is entered on every request.
    """

    __slots__ = ("_service", "_name", "_version", "_model", "_observation")

    def __init__(self, service: InferenceService, name: str, version: str | None) -> None:
        self._service = service
        self._name = name
        self._version = version

    def __enter__(self) -> tuple[ModelVersion, RequestObservation]:
        service = self._service
        model = self._model = service.registry.get(self._name, self._version)
        # Held from lookup to response: a version swap retires this pool only after it.
        model.pool.hold()
        try:
            observation = service.metrics.request(model.name, str(model.version)).__enter__()
        except BaseException:
            model.pool.release()
            raise
        self._observation = observation
        return model, observation

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._observation.__exit__(kind, exc, tb)
        finally:
            self._model.pool.release()


class InferenceService:
    """Runs validated requests on the registry's models and reports them to metrics."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        limits: RequestLimits,
        default_timeout_us: int = 0,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        #: Queue timeout of requests that set none, for models without a batcher (0: none).
        self.default_timeout_us = default_timeout_us

    def request(self, name: str, version: str | None) -> ModelRequest:
        """Look the model up, then time and count everything done inside the block."""
        return ModelRequest(self, name, version)

    async def run(
        self,
        model: ModelVersion,
        observation: RequestObservation,
        inputs: Tensors,
        outputs: list[str] | None = None,
        *,
        timeout_us: int | None = None,
    ) -> Tensors:
        """Validate ``inputs`` and run them; returns the requested outputs by name.

        With dynamic batching the request joins the model's queue, where ``timeout_us``
        (else the model's or the server's default; 0 is none) bounds its wait. Without, the
        same bounds the wait for a free session. ``timeout_us`` defaults to the request's
        header (``requested_timeout_us``).
        """
        rows = validate_inputs(model, inputs)
        names = output_names(model, outputs)
        if timeout_us is None:
            timeout_us = requested_timeout_us.get()
        batcher = model.batcher
        if isinstance(batcher, DynamicBatcher):
            try:
                batched, queued, computed = await batcher.submit(
                    inputs,
                    names,
                    rows,
                    timeout_us=timeout_us,
                    disconnected=disconnect_signal.get(),
                )
            except ServingError:
                raise
            except Exception as exc:
                raise runtime_error(exc) from None
            # The batcher counted the session run (once for the whole batch).
            observation.ran(queued, computed)
            return batched
        wait_us = self.default_timeout_us if timeout_us is None else timeout_us
        try:
            results, queued, computed = await model.pool.run(
                inputs,
                names,
                queue_timeout=wait_us / 1e6 if wait_us > 0 else None,
                abandoned=disconnect_signal.get(),
            )
        except ServingError:
            raise
        except RunAbandoned as exc:
            raise ClientDisconnected(str(exc)) from None
        except Exception as exc:
            raise runtime_error(exc) from None
        observation.ran(queued, computed, rows)
        return dict(zip(names, results, strict=True))
