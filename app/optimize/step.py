"""The optimisation step: convert, validate, check accuracy against the original, time both.

``optimize`` writes ``model.onnx`` and ``optimization.json`` (the report) into an empty
folder, or raises: ``OptimizationRefused`` with the figures when the optimised model is
further from the original than the limits allow, ``OptimizationFailed`` otherwise. It blocks
and may take minutes; the server and the CLI run it in a worker process with a time limit
(``app.optimize.process``).
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app import __version__
from app.optimize import targets, transforms
from app.optimize.accuracy import OutputAccuracy, class_outputs, compare
from app.optimize.errors import OptimizationFailed, OptimizationRefused
from app.optimize.report import REPORT_FILE, write_report
from app.optimize.samples import Feeds, Samples, generated_samples, load_samples, runs
from app.registry.config import ModelConfig, OptimizeConfig
from app.registry.model import (
    DEFAULT_PADDED_BATCH,
    TensorSpec,
    _spec,
    infer_max_batch_size,
    session_options,
)
from app.registry.providers import cpu_quota
from app.registry.repository import MODEL_FILE
from app.registry.validation import validate_model_file

#: Rows a run when the original and the optimised model are compared (batched models).
CHECK_BATCH = 32
#: Timed runs of each model at each batch size (after two untimed ones), within a budget.
SPEED_RUNS = 25
SPEED_SECONDS = 2.0

TOOLS = {
    "int8": "onnxruntime.quantization.quantize_dynamic (int8 weights, dynamic activations)",
    "int8-static": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, "
    "uint8 activations, MinMax calibration)",
    "fp16": "onnxruntime.transformers.float16.convert_float_to_float16 (keep_io_types)",
    "graph": "onnxruntime offline graph optimisation (ORT_ENABLE_ALL, optimized_model_filepath)",
}


@dataclass(frozen=True, slots=True)
class OptimizeJob:
    """What to optimise, how, and with which of the model's settings."""

    name: str
    source: Path
    output: Path
    options: OptimizeConfig
    config: ModelConfig
    labelled: bool = False
    samples: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.source),
            "output": str(self.output),
            "options": self.options.model_dump(),
            "config": self.config.model_dump(exclude_none=True),
            "labelled": self.labelled,
            "samples": str(self.samples) if self.samples is not None else None,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> OptimizeJob:
        return cls(
            name=doc["name"],
            source=Path(doc["source"]),
            output=Path(doc["output"]),
            options=OptimizeConfig.model_validate(doc["options"]),
            config=ModelConfig.model_validate(doc["config"]),
            labelled=doc["labelled"],
            samples=Path(doc["samples"]) if doc["samples"] else None,
        )


@dataclass(frozen=True, slots=True)
class _Signature:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch: int

    @property
    def batched(self) -> bool:
        return self.max_batch > 0

    @property
    def check_batch(self) -> int:
        """Rows a run of the accuracy check and the calibration (within max_batch_size)."""
        return min(CHECK_BATCH, self.max_batch) if self.batched else 1

    def preferred_batch(self, config: ModelConfig) -> int | None:
        """The batch size the speed check times besides 1 (None: unbatched)."""
        if not self.batched:
            return None
        batching = config.dynamic_batching
        preferred = batching.preferred_batch_sizes if batching is not None else []
        fitting = [size for size in preferred if size <= self.max_batch]
        return max(fitting) if fitting else min(DEFAULT_PADDED_BATCH, self.max_batch)


def _session(path: Path, config: ModelConfig, providers: targets.ProviderList) -> Any:
    options = session_options(config.session, cpu_quota())
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types
        text = " ".join(str(exc).split())[:500]
        raise OptimizationFailed(f"onnxruntime could not load {path.name}: {text}") from None


def _signature(session: Any, config: ModelConfig) -> _Signature:
    inputs = [_spec(a) for a in session.get_inputs()]
    outputs = [_spec(a) for a in session.get_outputs()]
    inferred = infer_max_batch_size(inputs, outputs)
    configured = config.max_batch_size
    max_batch = configured if configured is not None and inferred else inferred
    return _Signature(inputs, outputs, max_batch)


def _outputs(session: Any, feeds: list[Feeds], batched: bool) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    results: list[list[np.ndarray]] = [[] for _ in names]
    try:
        for feed in feeds:
            for store, value in zip(results, session.run(names, feed), strict=True):
                store.append(np.asarray(value))
    except Exception as exc:  # onnxruntime raises several unrelated types
        text = " ".join(str(exc).split())[:500]
        raise OptimizationFailed(f"a run on the samples failed: {text}") from None
    join = np.concatenate if batched else np.stack
    return {name: join(store) for name, store in zip(names, results, strict=True)}


def _median_ms(session: Any, feeds: Feeds) -> float:
    for _ in range(2):
        session.run(None, feeds)
    times: list[float] = []
    deadline = time.perf_counter() + SPEED_SECONDS
    while len(times) < SPEED_RUNS and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _speed_feeds(samples: Samples, batched: bool, batch: int) -> Feeds:
    first = runs(samples.part(0, 1), batched, 1)[0]
    if not batched:
        return first
    return {k: np.repeat(v[:1], batch, axis=0) for k, v in first.items()}


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


class Optimization:
    """One run of the step for one job (blocking)."""

    def __init__(self, job: OptimizeJob) -> None:
        self.job = job
        self.options = job.options
        self.model = job.output / MODEL_FILE
        self.warnings: list[str] = []

    def run(self) -> dict[str, Any]:
        job, options = self.job, self.options
        targets.require(options.provider)
        reference = _session(job.source, job.config, [("CPUExecutionProvider", {})])
        signature = _signature(reference, job.config)
        samples = (
            load_samples(job.samples, signature.inputs, signature.batched, job.config.preprocess)
            if job.samples is not None
            else generated_samples(signature.inputs, signature.batched)
        )
        calibrated = options.to == "int8-static" or (
            options.to == "int8" and options.provider == "tensorrt"
        )
        calibration, checked = samples, samples
        if calibrated and samples.count >= 2:
            # Calibrate on the first half, check on the second: the figures are for inputs
            # the calibration never saw.
            half = (samples.count + 1) // 2
            calibration, checked = samples.part(0, half), samples.part(half)
        with tempfile.TemporaryDirectory(prefix=".work-", dir=job.output) as scratch:
            table = self._convert(signature, Path(scratch), calibration)
        serve = targets.serving_providers(
            options.provider,
            targets.tensorrt_options(
                options.to,
                signature.inputs,
                signature.max_batch,
                signature.preferred_batch(job.config) or 1,
                table,
            )
            if options.provider == "tensorrt"
            else None,
        )
        self._validate(signature)
        optimized = _session(self.model, job.config, targets.resolved(serve, job.output))
        check_runs = runs(checked, signature.batched, signature.check_batch)
        scores = class_outputs(signature.outputs, job.config.postprocess, job.labelled)
        figures = compare(
            _outputs(reference, check_runs, signature.batched),
            _outputs(optimized, check_runs, signature.batched),
            scores,
            options,
        )
        report = self._report(samples, calibration if calibrated else None, checked, figures)
        report["serve"] = {"providers": serve}
        failures = [f for f in figures if not f.passed]
        if failures:
            message = (
                f"{options.to} optimisation of '{job.name}' refused on {checked.count} samples "
                f"({samples.source}): " + "; ".join(f.describe() for f in failures)
            )
            raise OptimizationRefused(message, {**report, "refused": True, "error": message})
        report["speed"] = self._speed(signature, optimized, checked)
        write_report(job.output / REPORT_FILE, report)
        return report

    def _convert(self, signature: _Signature, work: Path, calibration: Samples) -> str | None:
        """Write the optimised model; the TensorRT calibration table's name, if one is made."""
        job, options = self.job, self.options
        kind, provider = options.to, options.provider
        calibration_runs = runs(calibration, signature.batched, signature.check_batch)
        if provider == "tensorrt" and kind != "int8-static":
            # TensorRT builds its own fp16/int8 engine from the original graph.
            shutil.copyfile(job.source, self.model)
            if kind != "int8":
                return None
            folder = job.output / targets.ENGINE_CACHE
            folder.mkdir(exist_ok=True)
            return transforms.tensorrt_calibration_table(job.source, folder, calibration_runs)
        if kind == "int8":
            transforms.int8_dynamic(job.source, self.model, work)
        elif kind == "int8-static":
            transforms.int8_static(job.source, self.model, work, calibration_runs)
        elif kind == "fp16":
            transforms.fp16(job.source, self.model)
        else:
            providers = targets.resolved(targets.serving_providers(provider, None), work)
            transforms.graph(job.source, self.model, providers)
        return None

    def _validate(self, signature: _Signature) -> None:
        """The checks an upload gets, and the same inputs and outputs as the original."""
        made = validate_model_file(self.model)
        self.warnings.extend(made.warnings)
        before = [(s.name, s.datatype) for s in signature.inputs + signature.outputs]
        after = [(s.name, s.datatype) for s in made.inputs + made.outputs]
        if before != after:
            raise OptimizationFailed(
                f"the optimised model's inputs and outputs {after} differ from the original's "
                f"{before}"
            )

    def _report(
        self,
        samples: Samples,
        calibration: Samples | None,
        checked: Samples,
        figures: list[OutputAccuracy],
    ) -> dict[str, Any]:
        job, options = self.job, self.options
        return {
            "kind": options.to,
            "provider": options.provider,
            "tool": TOOLS[options.to]
            if options.provider != "tensorrt" or options.to == "int8-static"
            else f"TensorRT {options.to} (provider options)",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "onnx_serve": __version__,
            "onnxruntime": ort.__version__,
            "source": {
                "file": job.source.name,
                "sha256": _digest(job.source),
                "size_bytes": job.source.stat().st_size,
            },
            "size_bytes": self.model.stat().st_size if self.model.exists() else None,
            "samples": {
                "source": samples.source,
                "calibration": calibration.count if calibration is not None else None,
                "checked": checked.count,
                "disjoint": None if calibration is None else calibration is not checked,
            },
            "limits": {
                "min_agreement": options.min_agreement,
                "max_relative_error": options.max_relative_error,
                "tolerances": dict(options.tolerances),
            },
            "accuracy": {
                "passed": all(f.passed for f in figures),
                "outputs": {f.name: f.as_dict() for f in figures},
            },
            "warnings": self.warnings,
        }

    def _speed(self, signature: _Signature, optimized: Any, checked: Samples) -> dict[str, Any]:
        """Median latency of the original and the optimised model on the target provider."""
        job = self.job
        plain = targets.serving_providers(job.options.provider, {})
        with tempfile.TemporaryDirectory(prefix=".speed-", dir=job.output) as scratch:
            original = _session(job.source, job.config, targets.resolved(plain, Path(scratch)))
            preferred = signature.preferred_batch(job.config)
            sizes = [1] if preferred in (None, 1) else [1, preferred]
            batches = []
            for batch in sizes:
                feeds = _speed_feeds(checked, signature.batched, batch)
                before, after = _median_ms(original, feeds), _median_ms(optimized, feeds)
                batches.append(
                    {
                        "batch": batch,
                        "original_ms": round(before, 4),
                        "optimized_ms": round(after, 4),
                        "speedup": round(before / after, 3) if after > 0 else None,
                    }
                )
            del original
        return {"provider": optimized.get_providers()[0], "batches": batches}


def optimize(job: OptimizeJob) -> dict[str, Any]:
    """Run the step for ``job`` (blocking); returns the report written beside the model."""
    return Optimization(job).run()
