"""``onnx-serve check``: the upload's validation offline, printing the signature or the reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from app.cli import main
from tests.onnx_models import add_mul, fp16_converted, identity, mlp


def range_model() -> bytes:
    """Valid, but its warm-up on zeros fails (a Range with step 0)."""
    names = ("start", "limit", "delta")
    graph = helper.make_graph(
        [helper.make_node("Range", list(names), ["y"])],
        "range",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["K"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_the_command_prints_the_signature(tmp_path: Path) -> None:
    good = tmp_path / "good.onnx"
    good.write_bytes(add_mul(3).SerializeToString())
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "check", str(good)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"OK: {good} would be accepted"
    assert "  a  FP32   [-1, 3]" in lines and "  product  FP32   [-1, 3]" in lines
    assert "opsets: ai.onnx 17" in done.stdout


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "m.onnx"
    good.write_bytes(identity("INT32", [3]).SerializeToString())
    assert main(["check", "--json", str(good)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"] == [{"name": "input", "datatype": "INT32", "shape": [3]}]
    assert doc["max_batch_size"] == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (range_model(), "refused: warm-up inference on zeros failed"),
        (b"\xff" * 64, "refused: not an ONNX model"),
        (None, "no such file"),
    ],
)
def test_refusals_give_the_reason_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, reason: str
) -> None:
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert reason in captured.err


def test_config_is_checked_against_the_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(identity(shape=[2, 4]).SerializeToString())
    config = tmp_path / "config.json"
    config.write_text('{"max_batch_size": 8}')
    assert main(["check", str(model), "--config", str(config)]) == 1
    assert "max_batch_size is 8" in capsys.readouterr().err
    config.write_text('{"bogus": true}')
    assert main(["check", str(model), "--config", str(config)]) == 1
    assert "unknown key 'bogus'" in capsys.readouterr().err


def test_an_fp16_converted_model_is_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(fp16_converted(mlp()).SerializeToString())
    assert main(["check", str(model)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {model} would be accepted")
    assert "warning: onnx.checker: the nodes are not in topological order" in out
