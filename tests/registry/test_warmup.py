"""Warm-up: valid generated inputs for string models, the model's own samples, and a failure
on generated inputs that leaves a good model serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.errors import InvalidModel
from app.registry.config import ModelConfig
from app.registry.model import ModelVersion, load_version
from tests.onnx_models import failing_warmup, triton_simple, write_model


def load(root: Path, model: object, samples: Path | None = None) -> ModelVersion:
    path = write_model(root, "m", model)  # type: ignore[arg-type]
    return load_version(
        "m",
        1,
        path,
        ModelConfig(),
        default_providers="cpu",
        require_accelerator=False,
        cpu_quota=2,
        warmup_samples=samples,
    )


def test_a_model_that_parses_its_strings_warms_up(tmp_path: Path) -> None:
    # Cast string -> int32 fails on "" (what warm-up fed strings before): "0" parses.
    model = load(tmp_path, triton_simple("BYTES", width=4))
    assert "warmup_skipped" not in model.extras
    (session,) = model.pool.sessions
    a = np.array([["1", "2", "3", "4"]], dtype=object)
    b = np.array([["10", "20", "30", "40"]], dtype=object)
    total, _ = session.run(None, {"INPUT0": a, "INPUT1": b})
    assert total.tolist() == [["11", "22", "33", "44"]]


def test_a_failure_on_generated_inputs_only_skips_the_warm_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Range with a zero step fails on zeros, and works on real data.
    model = load(tmp_path, failing_warmup())
    assert "warm-up on generated inputs failed" in str(model.extras["warmup_skipped"])
    assert "serves without a warm-up" in caplog.text
    assert not model.pool.inline  # no timing from a warm-up that did not run
    feeds = {k: np.array(v, np.float32) for k, v in (("start", 0), ("limit", 3), ("delta", 1))}
    (y,) = model.pool.sessions[0].run(None, feeds)
    assert y.tolist() == [0, 1, 2]


def test_warm_up_on_the_models_samples(tmp_path: Path) -> None:
    samples = tmp_path / "warmup.npz"
    np.savez(samples, start=np.float32(0), limit=np.float32(5), delta=np.float32(2))
    model = load(tmp_path / "good", failing_warmup(), samples)
    assert "warmup_skipped" not in model.extras
    bad = tmp_path / "bad.npz"
    np.savez(bad, start=np.float32(0), limit=np.float32(5), delta=np.float32(0))
    with pytest.raises(InvalidModel, match="warm-up inference on warmup.samples failed"):
        load(tmp_path / "bad", failing_warmup(), bad)
    with pytest.raises(InvalidModel, match="has no array named 'delta'"):
        partial = tmp_path / "partial.npz"
        np.savez(partial, start=np.float32(0), limit=np.float32(5))
        load(tmp_path / "partial", failing_warmup(), partial)
    with pytest.raises(InvalidModel, match="is not in the model folder"):
        load(tmp_path / "missing", failing_warmup(), tmp_path / "nothing.npz")


def test_string_samples(tmp_path: Path) -> None:
    samples = tmp_path / "s.npz"
    np.savez(samples, INPUT0=np.array([["7"] * 4]), INPUT1=np.array([["8"] * 4]))
    model = load(tmp_path, triton_simple("BYTES", width=4), samples)
    assert "warmup_skipped" not in model.extras
    assert isinstance(model.pool.sessions[0], ort.InferenceSession)


@pytest.mark.parametrize("path", ["../x.npz", "/etc/x.npz", "a/../../x.npz", "x.txt"])
def test_samples_stay_inside_the_model_folder(path: str) -> None:
    with pytest.raises(ValueError, match="inside the model folder"):
        ModelConfig.model_validate({"warmup": {"samples": path}})
