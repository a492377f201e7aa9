"""Tiny real ONNX models built with onnx.helper, and a writer for model repositories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
