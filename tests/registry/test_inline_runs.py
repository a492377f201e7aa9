"""Micro-models run on the event loop; everything else, and any model that proves slow, not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from app.registry.inline_runs import provably_cheap
from tests.conftest import SAMPLE_MODELS
from tests.hostile_models import hann_window, loop_in_function, reshape_by_input
from tests.onnx_models import OPSET, identity, load_on_cpu, mlp, probe


def big_matmul() -> onnx.ModelProto:
    weight = np.ones((512, 512), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])],
        initializer=[onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def test_a_small_model_runs_inline_and_answers_right(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, mlp())
    assert model.pool.inline
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)

    async def run() -> tuple[list[np.ndarray], float, float]:
        return await model.pool.run({"x": x}, None)

    (y,), queued, computed = asyncio.run(run())
    (expected,) = model.pool.sessions[0].run(None, {"x": x})
    np.testing.assert_array_equal(y, expected)
    # No wait behind other runs: only the moment it took to take the free session.
    assert 0.0 <= queued < 0.01 and computed > 0


def test_what_never_runs_inline(tmp_path: Path) -> None:
    # A dynamic non-batch dimension: a request could make the run as large as it likes.
    assert not load_on_cpu(tmp_path / "a", identity(shape=["N", "M"])).pool.inline
    # A loop whose trip count comes from the data (fast on warm-up zeros).
    assert not load_on_cpu(tmp_path / "b", probe(width=4)).pool.inline
    # Dynamic batching: requests queue for the pool's threads and merge there.
    assert not load_on_cpu(tmp_path / "c", mlp(), dynamic_batching={}).pool.inline
    # No warm-up, no measurement.
    assert not load_on_cpu(tmp_path / "d", mlp(), warmup={"enabled": False}).pool.inline
    # 64 rows of a 512x512 product take far longer than a hand-off to a thread.
    assert not load_on_cpu(tmp_path / "e", big_matmul()).pool.inline


def test_a_slow_inline_run_sends_runs_back_to_threads(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, probe(width=4))
    model.pool.inline = True  # as if its warm-up had been fast and its graph plain
    feeds = {
        "x": np.ones((1, 4), np.float32),
        "idx": np.zeros((1, 1), np.int64),
        "spin": np.full((1, 1), 100_000, np.int64),
    }

    async def run() -> None:
        await model.pool.run(feeds, None)

    # A slow run (wall clock) has the runs after it timed on the CPU clock: fast ones in
    # between cannot keep it inline, the next slow one sends it to threads for good.
    fast = {**feeds, "spin": np.zeros((1, 1), np.int64)}

    async def fast_run() -> None:
        await model.pool.run(fast, None)

    asyncio.run(run())
    assert model.pool.inline
    for _ in range(5):
        asyncio.run(fast_run())
    assert model.pool.inline
    asyncio.run(run())
    assert not model.pool.inline
    for _ in range(300):
        asyncio.run(fast_run())
    assert not model.pool.inline


def shape_derived_reshape() -> onnx.ModelProto:
    """``y = Reshape(x, concat(shape(x)[0:1], [-1]))``: the shape is computed, from shapes."""
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["dims"]),
            helper.make_node("Slice", ["dims", "zero", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        "flatten_by_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            onnx.numpy_helper.from_array(np.array([0], np.int64), "zero"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "one"),
            onnx.numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def test_only_provably_cheap_graphs_run_inline(tmp_path: Path) -> None:
    # A Loop hidden in a model-local function, and a window whose size is an input's value:
    # both fast on warm-up zeros, both as slow as a request likes.
    assert not load_on_cpu(tmp_path / "f", loop_in_function()).pool.inline
    assert not load_on_cpu(tmp_path / "h", hann_window()).pool.inline
    # A shape taken from a request's values.
    assert not load_on_cpu(tmp_path / "r", reshape_by_input()).pool.inline
    # A shape computed from tensor shapes only is fine (exporters write these).
    assert load_on_cpu(tmp_path / "s", shape_derived_reshape()).pool.inline


def test_the_bundled_models_stay_inline(tmp_path: Path) -> None:
    for name in ("digits", "colors", "digits_cnn"):
        graph = onnx.load(str(SAMPLE_MODELS / name / "1" / "model.onnx"))
        assert provably_cheap(graph), name
