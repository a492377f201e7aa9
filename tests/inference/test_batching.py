"""The dynamic batcher over real onnxruntime sessions, driven on one event loop.

Requests are queued deterministically: a batcher only starts a run when a submit or a
finished run lets it, so tasks started together all queue behind a run in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from app.errors import ClientDisconnected, InvalidModel, ModelNotReady, QueueFull, QueueTimeout
from app.inference.batching import WATCH_QUEUED_AFTER, DynamicBatcher, batcher_for
from app.metrics import Metrics
from app.registry.model import ModelVersion
from tests.onnx_models import OPSET, load_on_cpu, mlp, probe, write_model

# Loop iterations of the probe model that keep a run busy for a good while (~0.1-0.5 s).
SLOW_SPIN = 60_000


def make_batcher(model: ModelVersion, metrics: Metrics) -> DynamicBatcher:
    batcher = batcher_for(model, metrics)
    assert batcher is not None
    return batcher


def feeds(x: np.ndarray, idx: int = 0, spin: int = 0) -> dict[str, np.ndarray]:
    rows = x.shape[0]
    return {
        "x": x.astype(np.float32),
        "idx": np.full((rows, 1), idx, dtype=np.int64),
        "spin": np.full((rows, 1), spin, dtype=np.int64),
    }


def expected_y(x: np.ndarray) -> np.ndarray:
    return np.asarray(2 * x + x.sum(axis=1, keepdims=True), dtype=np.float32)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def batches(metrics: Metrics) -> dict[int, int]:
    """Session runs by batch size, from the statistics the batcher reported."""
    stats = metrics.stats_for("m", "1")
    return {size: d.count for size, d in stats.batches.items()}


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


@pytest.fixture
def probe_model(tmp_path: Path) -> ModelVersion:
    return load_on_cpu(tmp_path, probe(), dynamic_batching={})


def test_batching_needs_config_and_batch_dim(tmp_path: Path) -> None:
    assert batcher_for(load_on_cpu(tmp_path / "a", probe()), Metrics()) is None
    off = load_on_cpu(tmp_path / "b", probe(), dynamic_batching={"enabled": False})
    assert batcher_for(off, Metrics()) is None
    unbatched = load_on_cpu(tmp_path / "c", probe(), dynamic_batching={}, max_batch_size=0)
    assert batcher_for(unbatched, Metrics()) is None


def test_idle_instance_runs_at_once_even_with_a_delay(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, probe(), dynamic_batching={"max_queue_delay_us": 60_000_000})
    batcher = make_batcher(model, Metrics())

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        task = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1))
        await asyncio.sleep(0)
        # Dispatched inside submit: nothing waits for the (one minute) delay.
        assert batcher.running == 1 and batcher.depth == 0
        out, queued, computed = await task
        np.testing.assert_allclose(out["y"], expected_y(x))
        assert list(out) == ["y"] and queued >= 0 and computed > 0

    run(scenario())


def test_queued_requests_merge_and_rows_map_back(probe_model: ModelVersion) -> None:
    metrics = Metrics()
    batcher = make_batcher(probe_model, metrics)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((rows, 4)).astype(np.float32) for rows in (1, 3, 2, 1, 4)]

    async def scenario() -> list[Any]:
        slow = batcher.submit(feeds(np.zeros((1, 4)), spin=SLOW_SPIN), ["y"], 1)
        rest = [batcher.submit(feeds(x, idx=i), ["y", "g"], len(x)) for i, x in enumerate(xs)]
        return await asyncio.gather(slow, *rest)

    _, *results = run(scenario())
    for i, (x, (out, _, _)) in enumerate(zip(xs, results, strict=True)):
        np.testing.assert_allclose(out["y"], expected_y(x), rtol=1e-6)
        assert out["g"].shape == (len(x), 1, 3)
        assert (out["g"][:, 0, 0] == 3 * i).all()
    assert batches(metrics) == {1: 1, 11: 1}
    stats = metrics.stats_for("m", "1")
    assert (stats.execution_count, stats.inference_count) == (2, 12)


def test_mixed_shapes_never_merge(probe_model: ModelVersion) -> None:
    metrics = Metrics()
    batcher = make_batcher(probe_model, metrics)
    widths = [3, 5, 3, 5, 3, 5]
    xs = [np.full((1, w), i, np.float32) for i, w in enumerate(widths)]

    async def scenario() -> list[Any]:
        slow = batcher.submit(feeds(np.zeros((1, 4)), spin=SLOW_SPIN), ["y"], 1)
        rest = [batcher.submit(feeds(x), ["y"], 1) for x in xs]
        return await asyncio.gather(slow, *rest)

    _, *results = run(scenario())
    for x, (out, _, _) in zip(xs, results, strict=True):
        np.testing.assert_allclose(out["y"], expected_y(x))
    # The slow run alone, then one batch per width.
    assert batches(metrics) == {1: 1, 3: 2}


def test_only_equal_trailing_shapes_merge(tmp_path: Path) -> None:
    # Dtypes are fixed by the model (validation refuses others); shapes after the batch
    # dimension may differ when the model leaves them dynamic.
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["b"])],
        "identity",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "K", "L"])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "K", "L"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    metrics = Metrics()
    batcher = make_batcher(load_on_cpu(tmp_path, model, dynamic_batching={}), metrics)
    arrays = [np.zeros((1, 2, 3), np.float32), np.zeros((1, 3, 2), np.float32)] * 2

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(batcher.submit({"a": a}, ["b"], 1) for a in arrays))

    results = run(scenario())
    assert [r[0]["b"].shape for r in results] == [a.shape for a in arrays]
    # The first runs alone (idle instance); the rest queue and form one batch per shape.
    assert batches(metrics) == {1: 2, 2: 1}


def test_poisoned_request_fails_alone(probe_model: ModelVersion) -> None:
    metrics = Metrics()
    batcher = make_batcher(probe_model, metrics)
    xs = [np.full((2, 4), i, np.float32) for i in range(4)]
    indices = [0, 1, 99, 2]  # the table has 5 rows: 99 makes onnxruntime fail

    async def scenario() -> list[Any]:
        slow = batcher.submit(feeds(np.zeros((1, 4)), spin=SLOW_SPIN), ["y"], 1)
        rest = [
            batcher.submit(feeds(x, idx=i), ["y", "g"], 2) for x, i in zip(xs, indices, strict=True)
        ]
        return await asyncio.gather(slow, *rest, return_exceptions=True)

    _, *results = run(scenario())
    for x, i, result in zip(xs, indices, results, strict=True):
        if i == 99:
            assert type(result).__name__ == "InvalidArgument", result
            assert "out of data bounds" in str(result)
            continue
        assert not isinstance(result, BaseException), result
        out = result[0]
        np.testing.assert_allclose(out["y"], expected_y(x))
        assert (out["g"][:, 0, 0] == 3 * i).all()
    # The merged run failed; the three good requests then ran one by one.
    assert batches(metrics) == {1: 1, 2: 3}


def test_output_rows_are_checked(tmp_path: Path) -> None:
    # Answers twice the rows it is given: a merged batch could not be split back.
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "x"], ["twice"], axis=0)],
        "twice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("twice", TensorProto.FLOAT, ["K", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    metrics = Metrics()
    batcher = make_batcher(load_on_cpu(tmp_path, model, dynamic_batching={}), metrics)
    xs = [np.full((2, 2), i, np.float32) for i in range(4)]

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(batcher.submit({"x": x}, ["twice"], 2) for x in xs))

    for x, (out, _, _) in zip(xs, run(scenario()), strict=True):
        np.testing.assert_array_equal(out["twice"], np.concatenate([x, x]))
    # Four single runs: the merged run of three was refused for its row count.
    assert batches(metrics) == {2: 4}


def test_preferred_batch_sizes_cut_batches(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, probe(), dynamic_batching={"preferred_batch_sizes": [4]})
    metrics = Metrics()
    batcher = make_batcher(model, metrics)

    async def scenario() -> None:
        slow = batcher.submit(feeds(np.zeros((1, 4)), spin=SLOW_SPIN), ["y"], 1)
        rest = [batcher.submit(feeds(np.ones((1, 4))), ["y"], 1) for _ in range(6)]
        await asyncio.gather(slow, *rest)

    run(scenario())
    assert batches(metrics) == {1: 1, 4: 1, 2: 1}


def test_delay_holds_a_queued_batch_until_it_fills(tmp_path: Path) -> None:
    config = {"max_queue_delay_us": 60_000_000, "preferred_batch_sizes": [4]}
    model = load_on_cpu(tmp_path, probe(), dynamic_batching=config)
    metrics = Metrics()
    batcher = make_batcher(model, metrics)

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        first = [asyncio.create_task(batcher.submit(feeds(x, spin=s), ["y"], 1)) for s in (1, 0, 0)]
        await asyncio.sleep(0)
        assert batcher.running == 1 and batcher.depth == 2
        # The first ran at once; the two that arrived while it ran are held for company.
        await until(lambda: batcher.running == 0)
        assert batcher.depth == 2 and not first[1].done()
        more = [asyncio.create_task(batcher.submit(feeds(x), ["y"], 1)) for _ in range(2)]
        await asyncio.gather(*first, *more)

    run(scenario())
    assert batches(metrics) == {1: 1, 4: 1}


def test_queue_full_is_refused_with_retry_after(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, probe(), dynamic_batching={"max_queue_size": 2})
    batcher = make_batcher(model, Metrics())

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        slow = asyncio.create_task(batcher.submit(feeds(x, spin=SLOW_SPIN), ["y"], 1))
        queued = [asyncio.create_task(batcher.submit(feeds(x), ["y"], 1)) for _ in range(2)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFull) as refused:
            await batcher.submit(feeds(x), ["y"], 1)
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
        await asyncio.gather(slow, *queued)

    run(scenario())


def test_timeout_in_queue(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, probe(), dynamic_batching={"timeout_us": 20_000})
    metrics = Metrics()
    batcher = make_batcher(model, metrics)

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        # Runs at once, so its own timeout never applies.
        slow = asyncio.create_task(batcher.submit(feeds(x, spin=SLOW_SPIN), ["y"], 1))
        late = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1))
        patient = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1, timeout_us=0))
        with pytest.raises(QueueTimeout, match="past its timeout of 20 ms"):
            await late
        assert batcher.depth == 1
        await asyncio.gather(slow, patient)

    run(scenario())
    assert batches(metrics) == {1: 2}


def test_cancelled_request_leaves_the_queue(probe_model: ModelVersion) -> None:
    metrics = Metrics()
    batcher = make_batcher(probe_model, metrics)

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        slow = asyncio.create_task(batcher.submit(feeds(x, spin=SLOW_SPIN), ["y"], 1))
        doomed = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1))
        await asyncio.sleep(0)
        assert batcher.depth == 1
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.depth == 0
        await slow

    run(scenario())
    assert batches(metrics) == {1: 1}


def test_disconnect_drops_a_queued_request(probe_model: ModelVersion) -> None:
    metrics = Metrics()
    batcher = make_batcher(probe_model, metrics)

    async def scenario() -> None:
        gone = asyncio.Event()
        disconnected: Callable[[], Awaitable[object]] = gone.wait
        x = np.ones((1, 4), np.float32)
        slow = asyncio.create_task(
            batcher.submit(feeds(x, spin=SLOW_SPIN), ["y"], 1, disconnected=disconnected)
        )
        left = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1, disconnected=disconnected))
        stays = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1))
        await asyncio.sleep(0)
        assert batcher.depth == 2
        gone.set()
        with pytest.raises(ClientDisconnected):
            await left
        assert batcher.depth == 1
        # A request already running is answered even if its client went away.
        await asyncio.gather(slow, stays)

    run(scenario())
    assert batches(metrics) == {1: 2}


def test_only_requests_that_wait_a_while_watch_their_client(probe_model: ModelVersion) -> None:
    """Watching a connection costs more than a short wait in the queue: requests that run
    within ``watch_after`` seconds never start a watch."""
    metrics = Metrics()
    batcher = make_batcher(probe_model, metrics)
    assert batcher.watch_after == WATCH_QUEUED_AFTER
    batcher.watch_after = 60.0
    watched: list[int] = []

    async def never_gone() -> None:
        watched.append(1)
        await asyncio.Event().wait()

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        quick = [batcher.submit(feeds(x), ["y"], 1, disconnected=never_gone) for _ in range(8)]
        await asyncio.gather(*quick)
        assert watched == []
        watching = make_batcher(probe_model, metrics)
        watching.watch_after = 0.001
        slow = asyncio.create_task(watching.submit(feeds(x, spin=SLOW_SPIN), ["y"], 1))
        waiting = asyncio.create_task(watching.submit(feeds(x), ["y"], 1, disconnected=never_gone))
        await until(lambda: bool(watched))  # queued behind the slow run: watched
        await asyncio.gather(slow, waiting)

    run(scenario())


def test_close_fails_what_is_still_queued(probe_model: ModelVersion) -> None:
    batcher = make_batcher(probe_model, Metrics())

    async def scenario() -> None:
        x = np.ones((1, 4), np.float32)
        slow = asyncio.create_task(batcher.submit(feeds(x, spin=SLOW_SPIN), ["y"], 1))
        queued = asyncio.create_task(batcher.submit(feeds(x), ["y"], 1))
        await asyncio.sleep(0)
        await batcher.close()
        with pytest.raises(ModelNotReady):
            await queued
        with pytest.raises(ModelNotReady):
            await batcher.submit(feeds(x), ["y"], 1)
        await slow

    run(scenario())


def rows_seen() -> onnx.ModelProto:
    """``y`` [N, 2]: every row holds N, the batch size the session ran with (rows that depend
    on the batch: refused at load for dynamic batching unless warm-up is off)."""
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
            helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "zerof"], ["x0"]),
            helper.make_node("Add", ["x0", "nf"], ["y"]),
        ],
        "rows_seen",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("zerof", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(("pad", "seen"), [(True, 8.0), (False, 3.0), ("auto", 3.0)])
def test_padding_gives_every_run_one_shape(tmp_path: Path, pad: object, seen: float) -> None:
    # "auto" pads only on accelerators, whose kernels re-plan whenever the shape changes.
    # Without a warm-up: the load's row check would refuse a model whose rows show the batch.
    model = load_on_cpu(
        tmp_path,
        rows_seen(),
        dynamic_batching={"preferred_batch_sizes": [8], "pad_batches": pad},
        warmup={"enabled": False},
    )
    metrics = Metrics()
    batcher = make_batcher(model, metrics)

    async def scenario() -> list[Any]:
        x = np.ones((3, 2), np.float32)
        return [await batcher.submit({"x": x}, ["y"], 3) for _ in range(2)]

    for outputs, _, _ in run(scenario()):
        assert outputs["y"].shape == (3, 2)
        assert (outputs["y"] == seen).all()
    assert batches(metrics) == {3: 2}  # the real rows are counted, not the padding
    model.pool.retire(1)


def test_padded_batches_merge_no_more_rows_than_the_padded_shape(tmp_path: Path) -> None:
    model = load_on_cpu(
        tmp_path, rows_seen(), dynamic_batching={"pad_batches": True}, warmup={"enabled": False}
    )
    metrics = Metrics()
    batcher = make_batcher(model, metrics)
    assert batcher.max_batch_size == 8  # no preferred size: 8 rows, not max_batch_size 64

    async def scenario() -> list[Any]:
        x = np.ones((3, 2), np.float32)
        return await asyncio.gather(*[batcher.submit({"x": x}, ["y"], 3) for _ in range(6)])

    for outputs, _, _ in run(scenario()):
        assert (outputs["y"] == 8.0).all()
    assert sum(size * count for size, count in batches(metrics).items()) == 18
    assert max(batches(metrics)) <= 8
    model.pool.retire(1)


def test_batching_is_refused_for_outputs_that_mix_rows(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match="rows of output 'y' depend on other rows"):
        load_on_cpu(tmp_path / "a", rows_seen(), dynamic_batching={})
    # Rows that stay apart load (and so does the same model without batching).
    assert load_on_cpu(tmp_path / "b", probe(), dynamic_batching={}).runner is None
    assert load_on_cpu(tmp_path / "c", rows_seen()).max_batch_size > 0


def test_dynamic_int8_batches_though_its_rows_move_within_the_quantization(
    tmp_path: Path,
) -> None:
    """Dynamic quantization scales activations by the whole run's range, so a row's answer
    moves a little with its batch-mates: tolerated (a graph that mixes rows is not)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    original = write_model(tmp_path / "fp32", "m", mlp(inputs=64, hidden=256, outputs=16))
    quantized = tmp_path / "int8.onnx"
    quantize_dynamic(original, quantized, weight_type=QuantType.QInt8)
    model = onnx.load(quantized)
    assert any(node.op_type == "DynamicQuantizeLinear" for node in model.graph.node)
    version = load_on_cpu(tmp_path / "int8", model, dynamic_batching={})
    assert version.config.dynamic_batching is not None  # loaded, with batching
    # The rows do move with the batch (else the test would prove nothing), within 5%.
    x = np.random.default_rng(3).uniform(-4.0, 4.0, (3, 64)).astype(np.float32)
    x[0] *= 10  # the first row sets the batch's range
    together = version.pool.sessions[0].run(None, {"x": x})[0]
    alone = version.pool.sessions[0].run(None, {"x": x[1:2]})[0]
    assert not np.allclose(together[1:2], alone, rtol=1e-3, atol=1e-5)
    assert np.linalg.norm(together[1:2] - alone) <= 0.05 * np.linalg.norm(alone)
