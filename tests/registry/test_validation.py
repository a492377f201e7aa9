"""Model file validation: every reason a model is refused, and the signature of a good one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.errors import InvalidModel
from app.registry.validation import check_external_data, max_supported_opset, validate_model_file
from tests.onnx_models import add_mul, failing_warmup, fp16_converted, identity, mlp


def save(path: Path, model: onnx.ModelProto | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def stamped(opsets: list[tuple[str, int]]) -> onnx.ModelProto:
    """An Identity graph stamped with the given opset imports (not run through the checker)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "stamped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def with_external_weights(location: str) -> onnx.ModelProto:
    """``y = x + w`` whose initializer ``w`` claims to live in ``location``."""
    model = stamped([("", 17)])
    weight = numpy_helper.from_array(np.ones((2,), np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    length = weight.external_data.add()
    length.key, length.value = "length", "8"
    model.graph.initializer.append(weight)
    model.graph.node[0].CopyFrom(helper.make_node("Add", ["x", "w"], ["y"]))
    return model


def refusal(path: Path) -> str:
    with pytest.raises(InvalidModel) as info:
        validate_model_file(path)
    return info.value.message


def test_good_model_gives_its_signature(tmp_path: Path) -> None:
    signature = validate_model_file(save(tmp_path / "m.onnx", add_mul(3)))
    assert [s.metadata() for s in signature.inputs] == [
        {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert [s.name for s in signature.outputs] == ["sum", "product"]
    assert signature.opsets == {"ai.onnx": 17}
    assert signature.max_batch_size > 0
    assert signature.as_dict()["ir_version"] == 8


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\xff" * 64, "not an ONNX model"),
        (mlp().SerializeToString()[:-40], "not an ONNX model|checker"),
    ],
)
def test_unparsable_files_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    assert re.search(reason, refusal(save(tmp_path / "m.onnx", content)))


def test_checker_failure_is_refused_when_onnxruntime_fails_too(tmp_path: Path) -> None:
    model = stamped([("", 17)])
    model.graph.node[0].input[0] = "undefined_tensor"
    reason = refusal(save(tmp_path / "m.onnx", model))
    assert reason.startswith("onnxruntime could not load the model") and "onnx.checker" in reason


@pytest.mark.parametrize("how", ["reversed", "fp16"])
def test_unsorted_nodes_that_onnxruntime_runs_are_accepted_with_a_warning(
    tmp_path: Path, how: str
) -> None:
    if how == "reversed":
        model = mlp()
        nodes = list(reversed(model.graph.node))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    else:
        model = fp16_converted(mlp())
    path = save(tmp_path / "m.onnx", model)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(str(path), full_check=True)
    signature = validate_model_file(path)
    assert [s.metadata() for s in signature.inputs] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 16]}
    ]
    assert signature.warnings == (
        "onnx.checker: the nodes are not in topological order (onnxruntime orders them itself)",
    )


def test_opset_newer_than_onnxruntime_is_refused(tmp_path: Path) -> None:
    ceiling = max_supported_opset("ai.onnx")
    assert ceiling >= 17
    too_new = stamped([("", ceiling + 1)])
    assert f"opset {ceiling + 1} of domain ai.onnx is newer" in refusal(
        save(tmp_path / "m.onnx", too_new)
    )
    ml_ceiling = max_supported_opset("ai.onnx.ml")
    ml_too_new = stamped([("", 17), ("ai.onnx.ml", ml_ceiling + 1)])
    assert "ai.onnx.ml" in refusal(save(tmp_path / "ml.onnx", ml_too_new))


@pytest.mark.parametrize(
    "location", ["../secret.bin", "sub/../../secret.bin", "/etc/hostname", "C:\\secret.bin", ""]
)
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 8)
    path = save(tmp_path / "model" / "1" / "model.onnx", with_external_weights(location))
    reason = refusal(path)
    assert "external data" in reason


def test_external_data_through_a_symlink_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 8)
    path = save(tmp_path / "v" / "model.onnx", with_external_weights("weights.bin"))
    os.symlink(tmp_path / "secret.bin", tmp_path / "v" / "weights.bin")
    assert "outside the model's folder" in refusal(path)


def test_external_data_inside_the_folder_is_accepted(tmp_path: Path) -> None:
    path = save(tmp_path / "v" / "model.onnx", with_external_weights("weights.bin"))
    (tmp_path / "v" / "weights.bin").write_bytes(np.ones((2,), np.float32).tobytes())
    model = onnx.load_model(str(path), load_external_data=False)
    assert check_external_data(model, path.parent) == [(tmp_path / "v" / "weights.bin")]
    assert validate_model_file(path).outputs[0].name == "y"
    missing = save(tmp_path / "w" / "model.onnx", with_external_weights("absent.bin"))
    assert "not there" in refusal(missing)


def test_failing_warmup_is_refused(tmp_path: Path) -> None:
    model = failing_warmup()
    assert "warm-up inference on zeros failed" in refusal(save(tmp_path / "m.onnx", model))


def test_unservable_tensor_type_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert "unsupported type" in refusal(save(tmp_path / "m.onnx", model))


def test_tensor_name_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    raw = identity(shape=["N", 4]).SerializeToString()
    # Same length, so every protobuf length prefix stays right; only the text breaks.
    broken = raw.replace(b"output", b"outp\xffu")
    assert broken != raw
    assert "UTF-8" in refusal(save(tmp_path / "model.onnx", broken))
