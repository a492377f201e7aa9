"""The session pool over a real onnxruntime session: a cancelled caller stops its run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from tests.onnx_models import load_on_cpu, probe

# Loop trips that keep a run busy for many minutes: only a terminated run ends in time.
ENDLESS_SPIN = 10**10


def feeds(spin: int) -> dict[str, np.ndarray]:
    return {
        "x": np.ones((1, 4), np.float32),
        "idx": np.zeros((1, 1), np.int64),
        "spin": np.full((1, 1), spin, np.int64),
    }


def test_a_cancelled_caller_terminates_its_started_run(tmp_path: Path) -> None:
    model = load_on_cpu(tmp_path, probe(4))
    pool = model.pool
    assert pool.size == 1 and not pool.inline

    async def scenario() -> None:
        endless = asyncio.create_task(pool.run(feeds(ENDLESS_SPIN), ["y"]))
        # Let the run start on the pool's only session, then cancel its caller.
        await asyncio.sleep(0.2)
        endless.cancel()
        # The next run needs that session: it finishes only if the endless one was stopped.
        results, _, _ = await asyncio.wait_for(pool.run(feeds(0), ["y"]), timeout=60)
        np.testing.assert_allclose(results[0], np.full((1, 4), 6.0, np.float32))
        assert endless.cancelled()

    asyncio.run(scenario())
    assert pool.retire(timeout=30)
