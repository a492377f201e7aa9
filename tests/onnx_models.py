"""Tiny real ONNX models built with onnx.helper, and a writer for model repositories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from app.registry.config import ModelConfig
from app.registry.model import ModelVersion, load_version

OPSET = 17

# v2 datatype -> ONNX element type, for every type the protocol carries.
V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def identity(datatype: str = "FP32", shape: list[Any] | None = None) -> onnx.ModelProto:
    """``output = Identity(input)`` for one element type; shape defaults to [N, 4]."""
    shape = shape if shape is not None else ["N", 4]
    elem = V2_TO_ONNX[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("input", elem, shape)],
        [helper.make_tensor_value_info("output", elem, shape)],
    )
    return _model(graph)


def add_mul(width: int = 4) -> onnx.ModelProto:
    """Two inputs ``a``, ``b`` [N, width] FP32 -> ``sum`` = a + b and ``product`` = a * b."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        "add_mul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", width]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("product", TensorProto.FLOAT, ["N", width]),
        ],
    )
    return _model(graph)


def mlp(inputs: int = 16, hidden: int = 32, outputs: int = 4, seed: int = 0) -> onnx.ModelProto:
    """A small random MLP ``x`` [N, inputs] -> ``y`` [N, outputs]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((inputs, hidden)).astype(np.float32)
    w2 = rng.standard_normal((hidden, outputs)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("MatMul", ["hr", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return _model(graph)


def triton_simple(datatype: str = "INT32", width: int = 16) -> onnx.ModelProto:
    """Triton's example ``simple``: ``INPUT0``, ``INPUT1`` [N, width] -> ``OUTPUT0`` = sum and
    ``OUTPUT1`` = difference. With ``BYTES`` (``simple_string``) the tensors hold integers
    as text: the graph casts them to INT32 and the results back to strings."""
    elem = V2_TO_ONNX[datatype]
    text = datatype == "BYTES"
    nodes = []
    a, b = "INPUT0", "INPUT1"
    if text:
        nodes += [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        ]
        a, b = "a", "b"
    total, difference = ("sum", "difference") if text else ("OUTPUT0", "OUTPUT1")
    nodes += [
        helper.make_node("Add", [a, b], [total]),
        helper.make_node("Sub", [a, b], [difference]),
    ]
    if text:
        nodes += [
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
        ]
    graph = helper.make_graph(
        nodes,
        f"simple_{datatype.lower()}",
        [helper.make_tensor_value_info(n, elem, ["N", width]) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, elem, ["N", width]) for n in ("OUTPUT0", "OUTPUT1")],
    )
    return _model(graph)


def triton_identity(datatype: str = "BYTES") -> onnx.ModelProto:
    """Triton's example ``simple_identity``: ``OUTPUT0`` = ``INPUT0`` [N, M]."""
    elem = V2_TO_ONNX[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", elem, ["N", "M"])],
        [helper.make_tensor_value_info("OUTPUT0", elem, ["N", "M"])],
    )
    return _model(graph)


def fp16_converted(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` through onnxruntime's float16 converter with ``keep_io_types``, as a user would
    convert it: the converter appends its Casts after the nodes that read them, so the nodes
    are not in topological order (onnxruntime runs it; onnx.checker refuses it)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=True)
    return converted


def cancelling(seed: int = 1) -> onnx.ModelProto:
    """``y = x @ w1 - x @ w2`` [N, 16] -> [N, 8] with w2 within 1e-3 of w1: the output is the
    tiny difference of two large products, which int8 weights cannot represent."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    w2 = (w1 + 1e-3 * rng.standard_normal((16, 8))).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("MatMul", ["x", "w2"], ["b"]),
            helper.make_node("Sub", ["a", "b"], ["y"]),
        ],
        "cancelling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return _model(graph)


def write_model(
    root: Path,
    name: str,
    model: onnx.ModelProto | bytes,
    version: int = 1,
    config: dict[str, Any] | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Write ``root/name/version/model.onnx`` (and config/labels); returns the file."""
    target = root / name / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))
    if labels is not None:
        (root / name / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    return target


def probe(width: int | str = "M", table_rows: int = 5) -> onnx.ModelProto:
    """A batched model whose inputs steer it, for queueing and batching tests.

    Inputs ``x`` [N, width] FP32, ``idx`` [N, 1] INT64 and ``spin`` [N, 1] INT64. Outputs
    ``y`` = 2x + the row's sum (rows stay apart) and ``g`` = rows ``idx`` of a fixed
    [table_rows, 3] table, so an index out of range makes the run fail. The run first loops
    ``max(spin)`` times over a small matrix product, so ``spin`` makes it as slow as needed.
    """
    rng = np.random.default_rng(7)
    table = np.arange(table_rows * 3, dtype=np.float32).reshape(table_rows, 3)
    weight = (rng.standard_normal((48, 48)) / 7).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["s_in", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["s_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "spin_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [48, 48]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [48, 48]),
        ],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["spin"], ["trips"], keepdims=0),
            helper.make_node("Loop", ["trips", "keep_going", "s0"], ["s_final"], body=body),
            helper.make_node("ReduceSum", ["s_final"], ["s_sum"], keepdims=0),
            helper.make_node("Mul", ["s_sum", "zero"], ["nothing"]),
            helper.make_node("ReduceSum", ["x", "axis1"], ["row_sum"], keepdims=1),
            helper.make_node("Mul", ["x", "two"], ["x2"]),
            helper.make_node("Add", ["x2", "row_sum"], ["y0"]),
            helper.make_node("Add", ["y0", "nothing"], ["y"]),
            helper.make_node("Gather", ["table", "idx"], ["g"], axis=0),
        ],
        "probe",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1]),
            helper.make_tensor_value_info("spin", TensorProto.INT64, ["N", 1]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, ["N", 1, 3]),
        ],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.eye(48, dtype=np.float32), "s0"),
            numpy_helper.from_array(np.array(True), "keep_going"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    return _model(graph)


def failing_warmup() -> onnx.ModelProto:
    """Valid, but a run on zeros fails: a Range whose step (delta) is 0."""
    graph = helper.make_graph(
        [helper.make_node("Range", ["start", "limit", "delta"], ["y"])],
        "range",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [])
            for n in ("start", "limit", "delta")
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K"])],
    )
    return _model(graph)


def load_on_cpu(root: Path, model: onnx.ModelProto, **config: Any) -> ModelVersion:
    """Write ``model`` as ``m`` v1 under ``root`` and load it on the CPU provider."""
    path = write_model(root, "m", model)
    return load_version(
        "m",
        1,
        path,
        ModelConfig.model_validate(config),
        default_providers="cpu",
        require_accelerator=False,
        cpu_quota=2,
    )


def looping(trips: int | None = None, pad_bytes: int = 0, scale: float = 0.5) -> onnx.ModelProto:
    """``y`` = ``x`` [64, 64] passed through tanh(x @ scale I) again and again.

    With ``trips`` None the count is the INT64 input ``n`` (so a request can keep its session
    busy for as long as it likes); else every run, the warm-up's included, makes ``trips``
    rounds (a model slow to load). ``pad_bytes`` of unused weights make the file that large.
    """
    weight = numpy_helper.from_array(np.eye(64, dtype=np.float32) * scale, "w")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Constant", [], ["w"], value=weight),
            helper.make_node("MatMul", ["x_in", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [64, 64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, [64, 64]),
        ],
    )
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])]
    initializers = []
    if trips is None:
        inputs.insert(0, helper.make_tensor_value_info("n", TensorProto.INT64, []))
    else:
        initializers.append(numpy_helper.from_array(np.array(trips, dtype=np.int64), "n"))
    if pad_bytes:
        pad = np.zeros(pad_bytes // 4, dtype=np.float32)
        initializers.append(numpy_helper.from_array(pad, "pad"))
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        "looping",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
        initializer=initializers,
    )
    return _model(graph)
