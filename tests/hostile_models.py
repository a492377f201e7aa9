"""Valid ONNX models that misbehave: runs that never end, costs their inputs' values steer,
outputs that mix the rows of a batch, shapes a request's values make impossible."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import OPSET


def _model(
    graph: onnx.GraphProto, functions: list[onnx.FunctionProto] | None = None
) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if functions:
        opsets.append(helper.make_opsetid("local", 1))
    model = helper.make_model(graph, opset_imports=opsets, functions=functions or [])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _spin_body() -> onnx.GraphProto:
    half = numpy_helper.from_array(np.eye(32, dtype=np.float32) * 0.5, "w")
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Constant", [], ["w"], value=half),
            helper.make_node("MatMul", ["s_in", "w"], ["m"]),
            helper.make_node("Tanh", ["m"], ["s_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [32, 32]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [32, 32]),
        ],
    )


def endless() -> onnx.ModelProto:
    """``x`` [N, 4] -> ``y`` = x, after a Loop of 10^15 trips (a graph constant): every run,
    warm-up and test runs included, lasts for ever unless it is terminated."""
    graph = helper.make_graph(
        [
            helper.make_node("Loop", ["trips", "", "s0"], ["s"], body=_spin_body()),
            helper.make_node("ReduceSum", ["s"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["x", "nothing"], ["y"]),
        ],
        "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
            numpy_helper.from_array(np.eye(32, dtype=np.float32), "s0"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return _model(graph)


def loop_in_function() -> onnx.ModelProto:
    """``x`` [N, 4] FP32 and ``n`` [1] INT64 -> ``y`` = x, after a local function whose Loop
    runs ``n`` trips: cheap on warm-up zeros, as slow as a request likes."""
    function = helper.make_function(
        "local",
        "Spin",
        ["count", "start"],
        ["end"],
        [helper.make_node("Loop", ["count", "", "start"], ["end"], body=_spin_body())],
        [helper.make_opsetid("", OPSET)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["n"], ["trips"], keepdims=0),
            helper.make_node("Spin", ["trips", "s0"], ["s"], domain="local"),
            helper.make_node("ReduceSum", ["s"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["x", "nothing"], ["y"]),
        ],
        "loop_in_function",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.eye(32, dtype=np.float32), "s0"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return _model(graph, [function])


def hann_window() -> onnx.ModelProto:
    """``size`` [] INT64 -> ``total`` [] FP32, the sum of a Hann window of that many points:
    its cost is the value of its input."""
    graph = helper.make_graph(
        [
            helper.make_node("HannWindow", ["size"], ["window"]),
            helper.make_node("ReduceSum", ["window"], ["total"], keepdims=0),
        ],
        "hann",
        [helper.make_tensor_value_info("size", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    return _model(graph)


def cumsum_rows() -> onnx.ModelProto:
    """``x`` [N, 4] -> ``y`` = CumSum over the batch axis: each row's output depends on the
    rows before it, so batching requests together would leak one client's values to
    another."""
    graph = helper.make_graph(
        [helper.make_node("CumSum", ["x", "axis"], ["y"])],
        "cumsum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(np.array(0, np.int64), "axis")],
    )
    return _model(graph)


def reshape_by_input() -> onnx.ModelProto:
    """``x`` [N, 4] FP32 and ``shape`` [2] INT64 -> ``y`` = Reshape(x, shape): a request's
    values can ask for a shape its data cannot fill."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape_by_input",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", "B"])],
    )
    return _model(graph)
