"""``onnx-serve optimize`` on the bundled models: every kind, the accuracy gate, the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.cli import main
from app.registry.providers import CUDA, usable_providers
from tests.conftest import SAMPLE_MODELS
from tests.onnx_models import cancelling, write_model
from tests.optimize.conftest import Digits


def run(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    probabilities: np.ndarray = session.run(["probabilities"], {"image": images})[0]
    return probabilities


def cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def report_of(folder: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads((folder / "optimization.json").read_text())
    return doc


def test_digits_int8_keeps_its_accuracy_on_the_held_out_digits(
    tmp_path: Path, digits: Digits
) -> None:
    out = tmp_path / "2"
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "optimize", str(SAMPLE_MODELS / "digits"),
         "--to", "int8", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"OK: int8 version for cpu written to {out}")
    assert "median latency on CPUExecutionProvider" in done.stdout
    held = digits.small[digits.held]
    predicted = run(cpu_session(out / "model.onnx"), held).argmax(axis=1)
    accuracy = float(np.mean(predicted == digits.labels[digits.held]))
    assert accuracy >= 0.97, accuracy
    report = report_of(out)
    assert report["kind"] == "int8" and report["provider"] == "cpu"
    accuracy_report = report["accuracy"]
    assert isinstance(accuracy_report, dict)
    figures = accuracy_report["outputs"]["probabilities"]
    assert figures["criterion"] == "top1_agreement" and figures["top1_agreement"] >= 0.99
    assert {b["batch"] for b in report["speed"]["batches"]} == {1, 8}  # type: ignore[index]
    # The folder is a version: the upload's validation takes its model.
    assert main(["check", str(out / "model.onnx")]) == 0


def test_cnn_int8_static_agrees_on_digits_the_calibration_never_saw(
    tmp_path: Path, digits: Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    samples = digits.samples(tmp_path / "samples.npz", digits.large)
    out = tmp_path / "out"
    code = main(
        ["optimize", str(SAMPLE_MODELS / "digits_cnn"), "--to", "int8-static",
         "--samples", str(samples), "-o", str(out), "--json"]
    )  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["ok"], printed
    assert printed["samples"]["calibration"] == 400 and printed["samples"]["checked"] == 400
    assert printed["samples"]["disjoint"] is True
    held = digits.large[digits.held]
    original = run(cpu_session(SAMPLE_MODELS / "digits_cnn" / "1" / "model.onnx"), held)
    quantized = run(cpu_session(out / "model.onnx"), held)
    agreement = float(np.mean(original.argmax(axis=1) == quantized.argmax(axis=1)))
    assert agreement >= 0.99, agreement
    reported = printed["accuracy"]["outputs"]["probabilities"]["top1_agreement"]
    assert reported == pytest.approx(agreement)
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


@pytest.mark.parametrize("kind", ["fp16", "graph"])
def test_fp16_and_graph_versions(tmp_path: Path, digits: Digits, kind: str) -> None:
    samples = digits.samples(tmp_path / "samples.npz", digits.small)
    out = tmp_path / kind
    assert main(["optimize", str(SAMPLE_MODELS / "digits" / "1"), "--to", kind,
                 "--samples", str(samples), "-o", str(out)]) == 0  # fmt: skip
    report = report_of(out)
    outputs = report["accuracy"]["outputs"]  # type: ignore[index]
    assert outputs["logits"]["relative_error"] < (1e-2 if kind == "fp16" else 1e-5)
    held = digits.small[digits.held]
    np.testing.assert_allclose(
        run(cpu_session(out / "model.onnx"), held),
        run(cpu_session(SAMPLE_MODELS / "digits" / "1" / "model.onnx"), held),
        atol=5e-3 if kind == "fp16" else 1e-5,
    )


def test_a_destructive_optimisation_is_refused_with_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = write_model(tmp_path / "models", "cancel", cancelling())
    out = tmp_path / "out"
    assert main(["optimize", str(model), "--to", "int8", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refused: int8 optimisation of 'cancel' refused on 64 samples")
    assert "'y': relative error" in err and "(limit relative_error 0.05)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]  # nothing written


@pytest.mark.skipif(CUDA in usable_providers(), reason="this machine has a CUDA GPU")
def test_a_missing_accelerator_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["optimize", str(SAMPLE_MODELS / "digits"), "--to", "fp16",
                 "--provider", "cuda", "-o", str(out)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "provider 'cuda' needs a CUDA GPU, which this machine does not have" in err
    assert not out.exists()


def test_a_folder_of_images_feeds_the_model_through_its_preprocessing(
    tmp_path: Path, digits: Digits, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    folder = tmp_path / "samples"
    folder.mkdir()
    for i in digits.held[:40]:
        # Dark digits on a light background, 32x32, as docs/seven.png: the digits model's
        # preprocessing shrinks and inverts them.
        ink = np.kron(digits.small[i, 0], np.ones((4, 4), np.float32))
        Image.fromarray((255 - ink * 255).astype(np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert main(["optimize", str(SAMPLE_MODELS / "digits"), "--to", "int8", "--samples",
                 str(folder), "-o", str(out), "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["samples"]["source"] == "samples/ (40 images)"
    assert report["samples"]["checked"] == 40


def test_a_step_over_its_time_limit_is_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["optimize", str(SAMPLE_MODELS / "digits_cnn"), "--to", "int8-static",
                 "--timeout", "0.2", "-o", str(out)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "took longer than 0.2 s and was stopped" in err
    assert list(tmp_path.iterdir()) == []
