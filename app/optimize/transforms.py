"""The conversions, each done by onnxruntime's own tools; nothing here rewrites a graph by hand.

- int8: ``quantize_dynamic`` (weights int8, activations quantized at run time);
- int8-static: ``quantize_static`` in QDQ format, per-channel weights, calibrated on samples;
- fp16: onnxruntime's float16 converter with ``keep_io_types`` (inputs and outputs stay fp32);
- graph: onnxruntime's offline optimisation (``SessionOptions.optimized_model_filepath``);
- a TensorRT calibration table from samples (``create_calibrator`` + ``write_calibration_table``).

The quantizers start from ``quant_pre_process`` (shape inference and basic graph
optimisation), as onnxruntime recommends. All functions block; callers run them in a worker
process.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
    write_calibration_table,
)

from app.optimize.errors import OptimizationFailed

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
#: The file TensorRT reads the int8 calibration table from (inside its engine cache folder).
CALIBRATION_TABLE = "calibration.flatbuffers"


class _Feeds(CalibrationDataReader):  # type: ignore[misc]
    """The calibration runs, handed to onnxruntime's calibrator one at a time."""

    def __init__(self, runs: list[Feeds]) -> None:
        self._runs: Iterator[Feeds] = iter(runs)

    def get_next(self) -> Feeds | None:
        return next(self._runs, None)


def _failed(what: str, exc: Exception) -> OptimizationFailed:
    text = " ".join(str(exc).split())[:500] or type(exc).__name__
    return OptimizationFailed(f"{what} failed: {text}")


def prepared(source: Path, work: Path) -> Path:
    """``quant_pre_process`` of ``source``; ``source`` itself when that tool cannot."""
    target = work / "prepared.onnx"
    try:
        # Symbolic shape inference (for transformer shapes) would need sympy; onnx's own
        # shape inference covers the graphs served here.
        quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    except Exception as exc:  # the tool raises whatever its passes raise
        log.warning("quant_pre_process could not prepare %s (%s): quantizing as is", source, exc)
        return source
    return target


def int8_dynamic(source: Path, target: Path, work: Path) -> None:
    """Weights to int8; activations quantized per run (no calibration)."""
    try:
        quantize_dynamic(prepared(source, work), target, weight_type=QuantType.QInt8)
    except Exception as exc:
        raise _failed("dynamic int8 quantization", exc) from None


def int8_static(source: Path, target: Path, work: Path, calibration: list[Feeds]) -> None:
    """QDQ int8, activation ranges from ``calibration`` (MinMax), weights per channel.

    Activations are unsigned and weights signed (U8S8), the pair onnxruntime's x86 int8
    kernels run fastest.
    """
    try:
        quantize_static(
            prepared(source, work),
            target,
            _Feeds(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    except Exception as exc:
        raise _failed("static int8 quantization", exc) from None


def fp16(source: Path, target: Path) -> None:
    """Float tensors and weights to fp16, inputs and outputs kept fp32 (Casts at the edges)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        with warnings.catch_warnings():
            # Weights below fp16's range are clamped; the accuracy check measures the effect.
            warnings.simplefilter("ignore")
            converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            # The converter appends its Casts at the end of the node list; onnxruntime sorts
            # nodes itself, but a sorted file also passes onnx.checker.
            OnnxModel(converted).topological_sort()
        onnx.save(converted, str(target))
    except Exception as exc:
        raise _failed("fp16 conversion", exc) from None


def graph(source: Path, target: Path, providers: list[tuple[str, dict[str, object]]]) -> None:
    """onnxruntime's full graph optimisation for ``providers``, saved as a model."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(source), sess_options=options, providers=providers)
    except Exception as exc:
        raise _failed("onnxruntime's graph optimisation", exc) from None
    if not target.is_file():
        raise OptimizationFailed("onnxruntime's graph optimisation wrote no model")


def tensorrt_calibration_table(source: Path, folder: Path, calibration: list[Feeds]) -> str:
    """Write TensorRT's int8 calibration table for ``source`` into ``folder``; its file name."""
    try:
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            calibrator = create_calibrator(
                source,
                augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.MinMax,
                providers=["CPUExecutionProvider"],
            )
            calibrator.collect_data(_Feeds(calibration))
            ranges = calibrator.compute_data()
            write_calibration_table({name: ranges[name] for name in ranges.keys()}, str(folder))
    except Exception as exc:
        raise _failed("TensorRT calibration", exc) from None
    for scratch_file in ("calibration.json", "calibration.cache"):
        (folder / scratch_file).unlink(missing_ok=True)
    return CALIBRATION_TABLE
