"""The data plane: every operation of the protocols, called alike by every front end.

A front end (REST in ``app/api``, gRPC in ``app/grpc``) decodes what it received, builds the
request's ``RequestContext``, calls one method here and encodes the answer. The walk of one
inference goes front end -> ``DataPlane.infer`` -> the version's runner -> its sessions, and
never comes back up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from app import __version__
from app.errors import ModelNotReady
from app.inference.access import AccessKeys
from app.inference.context import RequestContext
from app.inference.descriptions import model_config, model_metadata
from app.inference.images import ImageDecoders, ImageOptions, image_answer, image_call
from app.inference.lifecycle import ServerState
from app.inference.preprocessing import ImageLimits
from app.inference.validation import output_names, validate_inputs
from app.metrics import Metrics, RequestObservation
from app.protocol.limits import RequestLimits
from app.protocol.v2 import InferRequest
from app.registry.catalog import model_catalog
from app.registry.installer import ModelInstaller
from app.registry.load_parameters import load_from_parameters
from app.registry.model import Feeds, ModelVersion
from app.registry.registry import ModelRegistry
from app.registry.repository import validate_name
from app.settings import Settings

#: The protocol extensions served (v2 ``GET /v2``, gRPC ServerMetadata).
EXTENSIONS = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "parameters",
]

#: Turns the model a request is for into its decoded request (front ends decode what they
#: can before the lookup; /predict and KServe v1 need the model's signature to decode).
Decoder = Callable[[ModelVersion], InferRequest]


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
    """``with ServedRequest(plane, name, version, context) as (model, observation):``

    Looks the model up, holds its pool (a swap retires it only after this request), and times
    and counts everything done inside the block. A class rather than a generator-based
    context manager: it is entered on every request.
    """

    __slots__ = ("_plane", "_name", "_version", "_protocol", "_model", "_observation")

    def __init__(
        self, plane: DataPlane, name: str, version: str | None, context: RequestContext
    ) -> None:
        self._plane = plane
        self._name = name
        self._version = version
        self._protocol = context.protocol

    def __enter__(self) -> tuple[ModelVersion, RequestObservation]:
        model = self._model = self._plane.registry.get(self._name, self._version)
        model.pool.hold()
        try:
            metrics = self._plane.metrics
            observation = metrics.request(model.name, str(model.version), self._protocol)
            self._observation = observation.__enter__()
        except BaseException:
            model.pool.release()
            raise
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
    ) -> None:
        self.registry = registry
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
        return self.registry.is_ready(name, version)

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The live version asked for (404 or 503 when there is none)."""
        return self.registry.get(name, version)

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.registry.get(name, version)
        versions = [str(m.version) for m in self.registry.live() if m.name == model.name]
        return model_metadata(model, versions)

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return model_config(self.registry.get(name, version))

    def statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Triton's statistics of every live version, of a model's, or of one version."""
        if not name:
            models = self.registry.live()
        elif not version:
            self.registry.get(name)
            models = [m for m in self.registry.live() if m.name == name]
        else:
            models = [self.registry.get(name, version)]
        return [
            self.metrics.stats_for(m.name, str(m.version)).as_dict(m.name, str(m.version))
            for m in models
        ]

    # ---- repository --------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model in the repository or the registry, with its state and reason."""
        entries = [status.as_dict() for status in self.registry.index()]
        if ready_only:
            entries = [e for e in entries if e["state"] == "READY"]
        return entries

    def catalog(self) -> list[dict[str, Any]]:
        """Every model with its versions on disk and their states (``GET /models``)."""
        return model_catalog(self.registry)

    async def load(self, name: str, parameters: dict[str, Any]) -> list[str]:
        """(Re)load a model, first installing the config and files its parameters carry;
        returns the versions now live."""
        name = validate_name(name)
        limit = self.settings.max_upload_bytes
        if await load_from_parameters(self.installer, name, parameters, limit) is None:
            async with self.installer.lock(name):
                await self.registry.load(name)
        return [str(m.version) for m in self.registry.live() if m.name == name]

    async def unload(self, name: str) -> None:
        """Stop serving a model (its files stay); in-flight requests finish first."""
        async with self.installer.lock(validate_name(name)):
            await self.registry.unload(name)

    # ---- inference ---------------------------------------------------------------------------

    async def _run(
        self,
        model: ModelVersion,
        observation: RequestObservation,
        inputs: Feeds,
        outputs: list[str] | None,
        context: RequestContext,
    ) -> Feeds:
        rows = validate_inputs(model, inputs)
        names = output_names(model, outputs)
        runner = model.runner
        if runner is None:
            raise ModelNotReady(f"model '{model.name}' version {model.version} is not running")
        results, queued, computed = await runner.run(inputs, names, rows, context)
        observation.ran(queued, computed)
        return results

    async def infer(
        self, name: str, version: str | None, decode: Decoder, context: RequestContext
    ) -> InferenceResult:
        """Decode, validate and run one request on the model's runner.

        The request's own ``timeout`` (microseconds) replaces the front end's in ``context``.
        """
        with ServedRequest(self, name, version, context) as (model, observation):
            request = decode(model)
            if request.timeout_us is not None:
                context.timeout_us = request.timeout_us
            outputs = await self._run(
                model, observation, request.inputs, request.output_names(), context
            )
        return InferenceResult(model, request, outputs)

    async def classify_images(
        self,
        name: str,
        version: str | None,
        images: Sequence[bytes | str],
        options: ImageOptions,
        context: RequestContext,
    ) -> dict[str, Any]:
        """Decode and preprocess images off the event loop, run them as one batch, label."""
        with ServedRequest(self, name, version, context) as (model, observation):
            call = image_call(model, len(images), options)
            tensor = await self.image_decoders.prepare(images, call.pre, options.invert)
            results = await self._run(
                model, observation, {call.pre.input: tensor}, call.outputs, context
            )
            return image_answer(model, call, results, options)
