"""``config.json`` of a model: every key optional, unknown keys refused by name."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstancesConfig(_Strict):
    """How many sessions serve a version, and on what."""

    count: int = Field(1, ge=1, le=64, description="Sessions in the pool.")
    kind: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="'gpu' requires an accelerator; 'cpu' never uses one."
    )
    gpus: list[int] = Field(
        default_factory=list, description="GPU ids the instances are spread over (round robin)."
    )


class ProviderSpec(_Strict):
    """One execution provider and its options, e.g. CUDAExecutionProvider with device_id."""

    name: str
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class SessionConfig(_Strict):
    """onnxruntime SessionOptions."""

    # Each thread is an OS thread with its own stack: thousands of them exhaust memory.
    intra_op_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads per session (at most 256); default: CPU quota / instance count.",
    )
    inter_op_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads running independent nodes in parallel mode (at most 256); default 1.",
    )
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisations applied at load."
    )
    execution_mode: Literal["sequential", "parallel"] = Field(
        "sequential", description="Run independent branches of the graph in parallel or not."
    )
    enable_mem_arena: bool = Field(True, description="onnxruntime's CPU memory arena.")
    enable_mem_pattern: bool = Field(
        True, description="Plan memory from the first run's allocation pattern."
    )
    allow_spinning: bool = Field(
        False,
        description="Let idle intra-op threads spin; off by default because they would take "
        "CPU from the event loop and other models between requests.",
    )


class DynamicBatchingConfig(_Strict):
    """Merge concurrent requests into one session run."""

    enabled: bool = Field(True, description="Batch this model's requests.")
    max_queue_delay_us: int = Field(
        0, ge=0, description="Longest a request waits for others while all instances are busy."
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes to dispatch at once when reached."
    )
    max_queue_size: int = Field(1024, ge=1, description="Queued requests before 503.")
    timeout_us: int = Field(0, ge=0, description="Queue timeout (504); 0 uses the server's.")
    pad_batches: bool | Literal["auto"] = Field(
        "auto",
        description="Pad every run with zero rows to one size (the largest preferred batch "
        "size, else 8) so the graph always sees one shape; 'auto' pads on GPU providers, "
        "whose kernels re-plan (for hundreds of ms) whenever the shape changes.",
    )


class WarmupConfig(_Strict):
    """Inference before a version is marked ready: on generated inputs, or on samples."""

    enabled: bool = Field(True, description="Warm up before marking the version ready.")
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1], description="Batch sizes to warm up (batched models)."
    )
    samples: str | None = Field(
        None,
        description="An .npz in the model folder with one array per input (named after it, "
        "batch included) to warm up on instead of generated inputs; a failure on these "
        "fails the load, while a failure on generated inputs only skips the warm-up.",
    )

    @model_validator(mode="after")
    def _check(self) -> WarmupConfig:
        if self.samples is not None:
            parts = self.samples.replace("\\", "/").split("/")
            if self.samples.startswith("/") or ".." in parts or not self.samples.endswith(".npz"):
                raise ValueError("warmup.samples must be an .npz inside the model folder")
        return self


class VersionPolicy(_Strict):
    """Which versions on disk are served (Triton's latest / all / specific)."""

    policy: Literal["latest", "all", "specific"] = Field(
        "latest", description="latest: the newest num_versions; all; specific: versions."
    )
    num_versions: int = Field(1, ge=1, description="How many of the newest to serve.")
    versions: list[int] = Field(
        default_factory=list, description="The versions served with policy 'specific'."
    )

    @model_validator(mode="after")
    def _check(self) -> VersionPolicy:
        if self.policy == "specific" and not self.versions:
            raise ValueError("policy 'specific' needs a non-empty 'versions' list")
        if any(v < 1 for v in self.versions):
            raise ValueError("versions must be positive integers")
        return self


class PreprocessConfig(_Strict):
    """How an image becomes the model's input tensor (see docs/images.md).

    Pixels are 0..255; the tensor is ``(pixel * scale - mean) / std`` per channel, after the
    optional inversion ``255 - pixel``. What is absent is inferred from the input's shape and
    dtype.
    """

    input: str | None = Field(None, description="Input the image feeds; default: the first 4-D.")
    color: Literal["L", "RGB", "BGR"] | None = Field(
        None, description="Channel order; default: L for 1 channel, RGB for 3."
    )
    resize: Literal["stretch", "shorter_side_crop"] = Field(
        "stretch",
        description="'stretch' to the size, or scale the shorter side and crop the centre.",
    )
    resample: Literal["nearest", "box", "bilinear", "bicubic", "lanczos"] = Field(
        "bilinear", description="Resampling filter of the resize (antialiased when shrinking)."
    )
    crop_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="With shorter_side_crop: the crop's share of the resized shorter side "
        "(0.875 resizes to 256 and crops 224).",
    )
    size: tuple[int, int] | None = Field(None, description="[height, width]; default: graph.")
    layout: Literal["NCHW", "NHWC"] | None = Field(
        None, description="Tensor layout; default: NCHW when the second dimension is 1 or 3."
    )
    dtype: Literal["float32", "float16", "float64", "uint8", "int8"] | None = Field(
        None, description="Must match the input's type when given; default: the input's."
    )
    scale: float | None = Field(None, description="Multiply pixel values (0..255) by this.")
    mean: list[float] | None = Field(None, description="Per channel (or one for all).")
    std: list[float] | None = Field(None, description="Per channel (or one for all).")
    invert: bool | Literal["auto"] = Field(
        False,
        description="Use 255 - pixel; 'auto' inverts images whose border is light (a dark "
        "drawing on a light background). A request may override it.",
    )

    @model_validator(mode="after")
    def _check(self) -> PreprocessConfig:
        if self.size is not None and min(self.size) < 1:
            raise ValueError("size must be two positive integers [height, width]")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, 3):
                raise ValueError(f"{name} needs 1 value or 3 (one per channel)")
        if self.std is not None and any(v == 0 for v in self.std):
            raise ValueError("std must not be 0")
        return self


class PostprocessConfig(_Strict):
    """Classification outputs: softmax and top-k with labels."""

    output: str | None = Field(
        None, description="Output holding class scores; default: the first 2-D float output."
    )
    softmax: bool | Literal["auto"] = Field(
        "auto",
        description="Apply softmax to the scores; 'auto' applies it unless every row is "
        "already a probability distribution.",
    )
    top_k: int = Field(5, ge=1, description="Classes per image when the request names none.")


OptimizeKind = Literal["int8", "int8-static", "fp16", "graph"]
OptimizeProvider = Literal["cpu", "cuda", "tensorrt"]


class OptimizeConfig(_Strict):
    """Serve an optimised copy of each version, made at load, checked, cached beside it."""

    to: OptimizeKind = Field(
        description="int8 (dynamic quantization), int8-static (QDQ, calibrated on samples), "
        "fp16, or graph (onnxruntime's offline graph optimisation)."
    )
    provider: OptimizeProvider = Field(
        "cpu",
        description="Hardware the copy is made for and served on; tensorrt sets TensorRT's "
        "own fp16/int8 modes and its engine cache.",
    )
    samples: str | None = Field(
        None,
        description="Inputs for calibration and the accuracy check: an .npz of named inputs or "
        "a folder of images, relative to the model folder; default: samples.npz or samples/ "
        "there, else generated inputs.",
    )
    min_agreement: float = Field(
        0.99,
        ge=0.0,
        le=1.0,
        description="Least top-1 agreement with the original on class-score outputs.",
    )
    max_relative_error: float = Field(
        0.05,
        gt=0.0,
        description="Largest relative error (|optimised - original| / |original|, L2 norms) "
        "of the other outputs.",
    )
    tolerances: dict[str, float] = Field(
        default_factory=dict,
        description="Largest relative error per output name, for any output (overrides "
        "max_relative_error).",
    )
    timeout_seconds: float = Field(
        600.0, gt=0.0, description="Longest the optimisation and its checks may take."
    )


class ModelConfig(_Strict):
    """Everything a model may configure; what is absent is inferred from its graph."""

    max_batch_size: int | None = Field(
        None, ge=0, description="Largest batch; 0 means the model has no batch dimension."
    )
    instances: InstancesConfig = Field(default_factory=InstancesConfig)
    providers: Literal["auto", "cpu"] | list[ProviderSpec | str] | None = Field(
        None, description="'auto', 'cpu', or an ordered list; default: the server's."
    )
    require_accelerator: bool | None = Field(
        None, description="Fail the load on a CPU fallback; default: the server's setting."
    )
    session: SessionConfig = Field(default_factory=SessionConfig)
    dynamic_batching: DynamicBatchingConfig | None = None
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    preprocess: PreprocessConfig | None = None
    postprocess: PostprocessConfig | None = None
    optimize: OptimizeConfig | None = Field(
        None, description="Optimise every version at load (see docs/optimization.md)."
    )
    load: Literal["startup", "on_demand"] | None = Field(
        None,
        description="'startup': loaded when the server starts; 'on_demand': loaded by its "
        "first request (and again after an eviction); default: the server's "
        "LOAD_ON_DEMAND setting.",
    )
    pinned: bool = Field(
        False, description="Never evicted to make room for other models under a memory budget."
    )
