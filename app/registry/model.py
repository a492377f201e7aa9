"""A loaded model version: its signature, providers and pool of sessions."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort

from app.errors import InvalidModel
from app.protocol.datatypes import ORT_TO_V2, V2_TO_NUMPY
from app.registry import providers as prov
from app.registry.config import ModelConfig, SessionConfig
from app.registry.inline_runs import provably_cheap
from app.registry.row_check import batches_rows, dynamic_quantization, mixed_output
from app.registry.session_pool import SessionPool
from app.registry.time_limits import Deadline, no_deadline
from app.registry.warmup import sample_feeds, warm_up

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
# Rows of a padded batch when no preferred size is configured: on an H200, ResNet-50 padded
# to 8 rows ran 1.2x the raw batch-1 loop, padded to 64 rows 0.55x.
DEFAULT_PADDED_BATCH = 8
CPU = "CPUExecutionProvider"
# A CPU model whose largest batch runs faster than this runs on the event loop (see
# ``runs_inline``); its warm-up times this many runs.
INLINE_RUN_SECONDS = 50e-6
INLINE_PROBE_RUNS = 15
PLATFORM = "onnxruntime_onnx"
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A graph input or output: v2 datatype and shape, -1 for dynamic dimensions."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype[np.generic]:
        return V2_TO_NUMPY[self.datatype]

    def metadata(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


Feeds = dict[str, np.ndarray]
#: Returns once the request's client has gone away.
Disconnected = Callable[[], Awaitable[object]]
#: Outputs by name, seconds queued, seconds of the session run that computed them.
RunResult = tuple[Feeds, float, float]


class RunContext(Protocol):
    """What a runner reads of the request it runs (the inference layer's request context)."""

    #: Longest wait in a queue for a session or batch, in microseconds (0: none; None:
    #: the model's or the server's default).
    timeout_us: int | None
    #: Returns once the client has gone away (None: the front end cannot tell).
    disconnected: Disconnected | None


class Runner(Protocol):
    """Runs validated feeds on a version's sessions: its session pool, or a dynamic batcher
    in front of it. Every failure is a ``ServingError``."""

    async def run(
        self, feeds: Feeds, outputs: list[str], rows: int, context: RunContext
    ) -> RunResult:
        """Run ``feeds`` (``rows`` rows) and return the ``outputs`` asked for."""

    async def close(self) -> None:
        """Fail what still waits once the version's pool is retired."""


@dataclass
class ModelVersion:
    """One live version of a model; immutable once ready except for its pool's state."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    providers: list[str]
    fallback: list[str]
    pool: SessionPool
    labels: list[str] | None = None
    load_seconds: float = 0.0
    extras: dict[str, object] = field(default_factory=dict)
    #: What runs requests on ``pool``: set by the registry's runner factory once loaded.
    runner: Runner | None = None
    #: ``time.monotonic()`` of its last request (or its load): least recently used goes first.
    used_at: float = 0.0

    @property
    def provider(self) -> str:
        """The provider that runs the graph (the first one onnxruntime kept)."""
        return self.providers[0]

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]


def _spec(arg: ort.NodeArg) -> TensorSpec:
    try:
        name, kind, dims = arg.name, arg.type, arg.shape
    except UnicodeDecodeError:
        # A name or symbolic dimension that is not UTF-8: the file's fault, not the server's.
        raise InvalidModel("a tensor's name, type or dimension is not valid UTF-8") from None
    datatype = ORT_TO_V2.get(kind)
    if datatype is None:
        raise InvalidModel(f"tensor '{name}' has unsupported type {kind}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (dims or []))
    return TensorSpec(name, datatype, shape)


def infer_max_batch_size(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> int:
    """A dynamic first dimension on every input and output means a batch dimension."""
    tensors = inputs + outputs
    if tensors and all(t.shape and t.shape[0] == -1 for t in tensors):
        return DEFAULT_MAX_BATCH
    return 0


def session_options(config: SessionConfig, threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads or threads
    options.inter_op_num_threads = config.inter_op_threads or 1
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization_level]
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if config.execution_mode == "parallel"
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.enable_cpu_mem_arena = config.enable_mem_arena
    options.enable_mem_pattern = config.enable_mem_pattern
    options.log_severity_level = 3
    if not config.allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


# Inputs whose fixed shapes need more than this a request are refused at load: no request
# within the body limits could carry them, and zeros that large only exhaust memory.
MAX_WARMUP_BYTES = 1 << 30


def padded_batch_size(config: ModelConfig, max_batch_size: int, provider: str) -> int | None:
    """Rows every batched run is padded to, or None when runs keep their own size."""
    batching = config.dynamic_batching
    if batching is None or not batching.enabled or max_batch_size < 1:
        return None
    pad = batching.pad_batches
    if pad is False or (pad == "auto" and provider == CPU):
        return None
    preferred = [s for s in batching.preferred_batch_sizes if s <= max_batch_size]
    return max(preferred) if preferred else min(max_batch_size, DEFAULT_PADDED_BATCH)


def warmup_feeds(inputs: list[TensorSpec], batch: int) -> dict[str, np.ndarray]:
    """Zeros for every input ("0" for strings, which also parses as a number), dynamic
    dimensions set to ``batch`` (first) or 1."""
    feeds: dict[str, np.ndarray] = {}
    size = 0
    for spec in inputs:
        shape = tuple((batch if i == 0 else 1) if d == -1 else d for i, d in enumerate(spec.shape))
        size += math.prod(shape) * spec.dtype.itemsize
        if size > MAX_WARMUP_BYTES:
            raise InvalidModel(
                f"input '{spec.name}' has the fixed shape {list(spec.shape)}: the inputs of one "
                f"request would take over {MAX_WARMUP_BYTES >> 20} MiB"
            )
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "0", dtype=np.object_)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def runs_inline(
    session: ort.InferenceSession,
    path: Path,
    inputs: list[TensorSpec],
    max_batch: int,
    deadline: Deadline | None = None,
) -> bool:
    """Whether runs are so short that the event loop should make them itself.

    Handing a run to a thread and back costs tens of microseconds, more than a small
    model's whole run. Inline runs must stay short whatever a request sends, so only a
    model with fixed non-batch dimensions whose graph is provably cheap (see
    ``app.registry.inline_runs``) qualifies, and only if its largest batch runs in under
    ``INLINE_RUN_SECONDS``. The probe runs end at ``deadline``.
    """
    if any(-1 in spec.shape[1:] for spec in inputs):
        return False
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnxruntime read it; anything odd here just means no inline runs
        return False
    if not provably_cheap(graph):
        return False
    del graph
    feeds = warmup_feeds(inputs, min(max_batch, DEFAULT_MAX_BATCH) if max_batch else 1)
    times = []
    with deadline.options() if deadline is not None else contextlib.nullcontext() as options:
        for _ in range(INLINE_PROBE_RUNS):
            start = time.perf_counter()
            try:
                session.run(None, feeds, options)
            except Exception:  # generated inputs this graph refuses: it cannot be timed
                if deadline is not None and deadline.remaining() <= 0:
                    raise
                return False
            times.append(time.perf_counter() - start)
            if times[-1] > 20 * INLINE_RUN_SECONDS:
                return False
    return sorted(times)[len(times) // 2] < INLINE_RUN_SECONDS


def load_version(
    name: str,
    version: int,
    path: Path,
    config: ModelConfig,
    *,
    default_providers: str,
    require_accelerator: bool,
    cpu_quota: int,
    labels: list[str] | None = None,
    warmup_samples: Path | None = None,
    deadline: Deadline | None = None,
) -> ModelVersion:
    """Create the pool of sessions for one version, check providers, warm up (blocking).

    The warm-up runs on ``warmup_samples`` (an .npz of named inputs) when given, else on
    generated inputs (see ``app.registry.warmup``); its runs are terminated at ``deadline``
    (then ``StepTimedOut``).
    """
    run = deadline.run if deadline is not None else no_deadline
    start = time.perf_counter()
    instances = config.instances
    threads = max(1, cpu_quota // instances.count)
    usable = prov.usable_providers()
    spec = config.providers if config.providers is not None else default_providers
    must_accelerate = (
        config.require_accelerator
        if config.require_accelerator is not None
        else require_accelerator
    )
    sessions: list[ort.InferenceSession] = []
    requested: list[str] = []
    missing: list[str] = []
    for i in range(instances.count):
        device = instances.gpus[i % len(instances.gpus)] if instances.gpus else None
        choice, missing = prov.resolve(spec, instances, device, usable)
        requested = choice.names
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=session_options(config.session, threads),
                providers=list(zip(choice.names, choice.options, strict=True)),
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise InvalidModel(f"onnxruntime could not load the model: {exc}") from None
        sessions.append(session)
    actual = list(sessions[0].get_providers())
    fallback = list(dict.fromkeys(missing + [p for p in requested if p not in actual]))
    if fallback:
        message = (
            f"model {name} v{version}: asked for {', '.join(fallback)} but runs on {actual[0]}"
        )
        if must_accelerate:
            raise InvalidModel(message + " and require_accelerator is set")
        log.warning(message)
    inputs = [_spec(a) for a in sessions[0].get_inputs()]
    outputs = [_spec(a) for a in sessions[0].get_outputs()]
    inferred = infer_max_batch_size(inputs, outputs)
    max_batch = config.max_batch_size if config.max_batch_size is not None else inferred
    if max_batch > 0 and inferred == 0:
        raise InvalidModel(
            f"max_batch_size is {max_batch} but not every input and output has a dynamic "
            "first dimension"
        )
    pool = SessionPool(sessions, f"ort-{name}-{version}")
    model = ModelVersion(
        name=name,
        version=version,
        path=path,
        config=config,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch,
        providers=actual,
        fallback=fallback,
        pool=pool,
        labels=labels,
    )
    warmed = config.warmup.enabled
    if warmed:
        sizes = config.warmup.batch_sizes if max_batch > 0 else [1]
        padded = padded_batch_size(config, max_batch, actual[0])
        if padded is not None:
            # Batched runs all take this shape: plan its kernels before the first request.
            sizes = [padded]
        try:
            if warmup_samples is not None:
                feeds = [sample_feeds(warmup_samples, inputs)]
            else:
                feeds = [warmup_feeds(inputs, min(b, max_batch) if max_batch else 1) for b in sizes]
            label = f"model {name} v{version}"
            skipped = warm_up(label, sessions, feeds, warmup_samples is None, run)
        except InvalidModel:  # StepTimedOut included
            pool.retire(0)
            raise
        if skipped is not None:
            model.extras["warmup_skipped"] = skipped
            warmed = False
    if warmed and batches_rows(config, max_batch):
        # app/registry/row_check.py: batching must not hand one client another's values.
        specs = [(i.name, i.datatype, i.dtype, i.shape) for i in inputs]
        mixed = mixed_output(
            sessions[0], specs, [o.name for o in outputs], run, partial(dynamic_quantization, path)
        )
        if mixed is not None:
            pool.retire(0)
            raise InvalidModel(
                f"dynamic batching is configured, but the rows of output '{mixed}' depend on "
                "other rows of the batch (an operation over the batch axis): requests batched "
                "together would see each other's values; turn dynamic_batching off"
            )
    batching = config.dynamic_batching is not None and config.dynamic_batching.enabled
    if warmed and actual[0] == CPU and not batching:
        pool.inline = runs_inline(sessions[0], path, inputs, max_batch, deadline)
        if pool.inline:
            log.info("model %s v%d runs on the event loop (runs take microseconds)", name, version)
    model.load_seconds = time.perf_counter() - start
    return model
