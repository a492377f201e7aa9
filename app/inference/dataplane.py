"""The data plane: every operation of the protocols, called alike by every front end.

A front end (REST in ``app/api``, gRPC in ``app/grpc``) decodes what it received, builds the
request's ``RequestContext``, calls one method here and encodes the answer. The walk of one
inference goes front end -> ``DataPlane.infer`` -> the version's runner -> its sessions, and
never comes back up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar

from app import __version__
from app.errors import ModelNotLoaded, ModelNotReady, ServingError
from app.inference.access import AccessKeys
from app.inference.classification import classified
from app.inference.context import Phases, RequestContext
from app.inference.descriptions import model_config, model_metadata
from app.inference.images import ImageDecoders, ImageOptions, image_answer, image_call
from app.inference.lifecycle import ServerState
from app.inference.preprocessing import ImageLimits
from app.inference.validation import output_names, validate_inputs
from app.metrics import Metrics, RequestObservation
from app.protocol.limits import RequestLimits
from app.protocol.v2 import InferRequest
from app.registry.catalog import model_catalog, repository_index
from app.registry.installer import ModelInstaller
from app.registry.load_parameters import load_from_parameters
from app.registry.model import Feeds, ModelVersion
from app.registry.registry import ModelRegistry
from app.registry.repository import validate_name
from app.registry.residency import Residency
from app.settings import Settings

#: The protocol extensions served (v2 ``GET /v2``, gRPC ServerMetadata).
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
]

#: Loads a cold start may wait for: a version evicted again between its load and the
#: request's turn (memory very short) is loaded once more, then the request fails.
COLD_START_LOADS = 2

#: Turns the model a request is for into its decoded request (front ends decode what they
#: can before the lookup; /predict and KServe v1 need the model's signature to decode).
Decoder = Callable[[ModelVersion], InferRequest]
#: What a front end answers with: its encoding of a served inference (timed as the request's
#: output step, Triton's compute_output).
Answer = TypeVar("Answer")


def limits_from(settings: Settings) -> RequestLimits:
    return RequestLimits(
        max_request_bytes=settings.max_request_bytes,
        max_elements=settings.max_tensor_elements,
        max_depth=settings.max_json_depth,
        max_inputs=settings.max_inputs,
        max_bytes_element=settings.max_bytes_element,
        max_response_bytes=settings.max_response_bytes,
        max_json_containers=settings.max_json_containers,
    )


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(
        max_pixels=settings.max_image_pixels,
        max_decoded_bytes=settings.max_decoded_image_bytes,
        max_request_pixels=settings.max_request_image_pixels,
    )


class ServedRequest:
    """``with ServedRequest(plane, model, context) as observation:``

    Holds the model's pool (a swap or an eviction retires it only after this request), marks
    it used, and times and counts everything done inside the block. A class rather than a
    generator-based context manager: it is entered on every request.
    """

    __slots__ = ("_plane", "_model", "_protocol", "_observation")

    def __init__(self, plane: DataPlane, model: ModelVersion, context: RequestContext) -> None:
        self._plane = plane
        self._model = model
        self._protocol = context.protocol

    def __enter__(self) -> RequestObservation:
        model = self._model
        model.pool.hold()
        model.used_at = time.monotonic()
        try:
            metrics = self._plane.metrics
            observation = metrics.request(model.name, str(model.version), self._protocol)
            self._observation = observation.__enter__()
        except BaseException:
            model.pool.release()
            raise
        return observation

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


@dataclass(slots=True)
class InferenceResult:
    """A served inference: the version that ran it, the request as decoded, its outputs."""

    model: ModelVersion
    request: InferRequest
    outputs: Feeds


class DataPlane:
    """Inference, metadata, statistics, readiness and repository operations."""

    def __init__(
        self,
        registry: ModelRegistry,
        installer: ModelInstaller,
        metrics: Metrics,
        settings: Settings,
        state: ServerState,
        residency: Residency,
    ) -> None:
        self.registry = registry
        #: Loads models on demand for requests that find them unloaded.
        self.residency = residency
        self.installer = installer
        self.metrics = metrics
        self.settings = settings
        self.state = state
        self.limits = limits_from(settings)
        self.access = AccessKeys(settings)
        self.image_decoders = ImageDecoders(
            image_limits(settings), settings.image_decode_concurrency
        )

    # ---- health and metadata -----------------------------------------------------------------

    def ready(self) -> bool:
        """Startup loading is done and the server is not shutting down."""
        return self.state.serving

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.settings.server_name, "version": __version__, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether a request would be served (a model that loads on demand is ready)."""
        return self.registry.is_ready(name, version)

    def model_names(self) -> list[str]:
        """The names of the models with a live version, sorted."""
        return sorted({m.name for m in self.registry.live()})

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The live version asked for (404 or 503 when there is none)."""
        return self.registry.get(name, version)

    async def loaded_model(
        self, name: str, version: str | None, context: RequestContext | None = None
    ) -> ModelVersion:
        """The live version asked for, loaded first if it loads on demand (a cold start,
        within the request's timeout, else the server's default)."""
        try:
            return self.registry.get(name, version)
        except ModelNotLoaded:
            return await self._cold_start(name, version, context)

    async def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = await self.loaded_model(name, version)
        versions = [str(m.version) for m in self.registry.live() if m.name == model.name]
        return model_metadata(model, versions)

    async def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return model_config(await self.loaded_model(name, version))

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Triton's statistics of every live version, of a model's, or of one version."""
        if not name:
            models = self.registry.live()
        elif not version:
            if not self.registry.is_ready(name):
                self.registry.get(name)  # the reason it is not served
            models = [m for m in self.registry.live() if m.name == name]
        else:
            try:
                models = [self.registry.get(name, version)]
            except ModelNotLoaded:
                models = []
        return [
            self.metrics.stats_for(m.name, str(m.version)).as_dict(m.name, str(m.version))
            for m in models
        ]

    # ---- repository --------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model in the repository or the registry, with its state and reason (and
        the memory of a loaded version)."""
        entries = repository_index(self.registry)
        if ready_only:
            entries = [e for e in entries if e["state"] == "READY"]
        return entries

    def catalog(self) -> list[dict[str, Any]]:
        """Every model with its versions on disk and their states (``GET /models``)."""
        return model_catalog(self.registry)

    async def load(self, name: str, parameters: dict[str, Any]) -> list[str]:
        """(Re)load a model, first installing the config and files its parameters carry;
        returns the versions now live. Every error says "failed to load", as Triton's do
        (its clients and tools match on it)."""
        try:
            name = validate_name(name)
            limit = self.settings.max_upload_bytes
            if await load_from_parameters(self.installer, name, parameters, limit) is None:
                async with self.installer.lock(name):
                    await self.registry.load(name)
        except ServingError as exc:
            if exc.message.startswith("failed to load"):
                raise
            raise type(exc)(
                f"failed to load '{name:.64}': {exc.message}", retry_after=exc.retry_after
            ) from None
        return [str(m.version) for m in self.registry.live() if m.name == name]

    async def unload(self, name: str) -> None:
        """Stop serving a model (its files stay); in-flight requests finish first."""
        async with self.installer.lock(validate_name(name)):
            await self.registry.unload(name)

    # ---- inference ---------------------------------------------------------------------------

    async def _complete(
        self,
        model: ModelVersion,
        observation: RequestObservation,
        context: RequestContext,
        started: float,
        run: tuple[Feeds, list[str], int],
        encode: Callable[[Feeds], Answer],
    ) -> Answer:
        """Run validated feeds (``run``: feeds, outputs, rows) on the model's runner, encode
        the outputs, and report the request's phases to its statistics and trace."""
        feeds, names, rows = run
        runner = model.runner
        if runner is None:
            raise ModelNotReady(f"model '{model.name}' version {model.version} is not running")
        prepared = perf_counter()
        outputs, queued, computed = await runner.run(feeds, names, rows, context)
        ran = perf_counter()
        answer = encode(outputs)
        encoded = perf_counter()
        observation.completed(prepared - started, queued, computed, encoded - ran)
        if context.trace is not None:
            phases = Phases(started, prepared, queued, computed, ran, encoded)
            context.trace.phases(model.name, str(model.version), rows, phases)
        return answer

    async def _cold_start(
        self, name: str, version: str | None, context: RequestContext | None
    ) -> ModelVersion:
        """Wait for the model's load on demand, then look it up (the caller holds its pool
        before anything else runs: a version just loaded is not evicted before that)."""
        timeout_us = context.timeout_us if context is not None else None
        if context is not None:
            context.cold_start = True
        try:
            for _ in range(COLD_START_LOADS):
                await self.residency.load_on_demand(name, version, timeout_us)
                try:
                    return self.registry.get(name, version)
                except ModelNotLoaded:
                    continue
            raise ModelNotReady(f"model '{name}' was evicted again as soon as it loaded; retry")
        except ServingError as exc:
            if context is not None:
                failures = self.metrics.request_failure
                failures.labels(name, version or "", context.protocol, exc.reason).inc()
            raise

    async def infer(
        self,
        name: str,
        version: str | None,
        decode: Decoder,
        context: RequestContext,
        encode: Callable[[InferenceResult], Answer],
    ) -> Answer:
        """Decode, validate and run one request on the model's runner, and encode its answer.

        The request's own ``timeout`` (microseconds) replaces the front end's in ``context``
        once the model is loaded.
        """
        model = await self.loaded_model(name, version, context)
        with ServedRequest(self, model, context) as observation:
            started = perf_counter()
            request = decode(model)
            if request.timeout_us is not None:
                context.timeout_us = request.timeout_us
            rows = validate_inputs(model, request.inputs)
            names = output_names(model, request.output_names())
            classes = request.classification

            def answer(outputs: Feeds) -> Answer:
                if classes:
                    outputs = classified(model, outputs, classes)
                return encode(InferenceResult(model, request, outputs))

            return await self._complete(
                model, observation, context, started, (request.inputs, names, rows), answer
            )

    async def classify_images(
        self,
        name: str,
        version: str | None,
        images: Sequence[bytes | str],
        options: ImageOptions,
        context: RequestContext,
        encode: Callable[[dict[str, Any]], Answer],
    ) -> Answer:
        """Decode and preprocess images off the event loop, run them as one batch, label, and
        encode the labelled answer."""
        model = await self.loaded_model(name, version, context)
        with ServedRequest(self, model, context) as observation:
            started = perf_counter()
            call = image_call(model, len(images), options)
            tensor = await self.image_decoders.prepare(images, call.pre, options.invert)
            feeds = {call.pre.input: tensor}
            rows = validate_inputs(model, feeds)
            names = output_names(model, call.outputs)
            return await self._complete(
                model,
                observation,
                context,
                started,
                (feeds, names, rows),
                lambda outputs: encode(image_answer(model, call, outputs, options)),
            )
