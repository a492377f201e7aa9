"""Checks a model file passes before it is installed: structure, opsets, data files, a run."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import onnx
import onnxruntime as ort
from onnx import helper

from app.errors import InvalidModel, hide_paths
from app.registry.model import TensorSpec, _spec, infer_max_batch_size, warmup_feeds
from app.registry.time_limits import Deadline, StepTimedOut, no_deadline

# Domains whose opset onnxruntime stamps a ceiling on; custom domains are left to the session.
ONNX_DOMAINS = {"": "ai.onnx", "ai.onnx": "ai.onnx", "ai.onnx.ml": "ai.onnx.ml"}
_PROBE_CEILING = 64
_MAX_REASON = 600


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """What a valid model file offers: its tensors and where it came from."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opsets: dict[str, int]
    ir_version: int
    producer: str
    #: What onnx.checker found in a model onnxruntime loads and runs all the same.
    warnings: tuple[str, ...] = ()

    @property
    def max_batch_size(self) -> int:
        """The batch size inferred from the graph (0: no batch dimension)."""
        return infer_max_batch_size(self.inputs, self.outputs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
            "opsets": self.opsets,
            "ir_version": self.ir_version,
            "producer": self.producer,
            "max_batch_size": self.max_batch_size,
            "warnings": list(self.warnings),
        }


def _reason(exc: BaseException) -> str:
    text = hide_paths(" ".join(str(exc).split())) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        for sparse in [attr.sparse_tensor, *attr.sparse_tensors]:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and attributes, subgraphs and functions too."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def check_external_data(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """The external data files the model names, all inside ``folder``; refuse any other."""
    root = folder.resolve()
    found: list[Path] = []
    for tensor in model_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        label = f"tensor '{tensor.name}'"
        if not location or "\x00" in location:
            raise InvalidModel(f"{label} has external data without a valid location")
        if os.path.isabs(location) or PureWindowsPath(location).is_absolute():
            raise InvalidModel(f"{label} names external data by an absolute path: refused")
        parts = location.replace("\\", "/").split("/")
        if ".." in parts:
            raise InvalidModel(f"{label} names external data outside the model's folder")
        target = (root / location).resolve()
        if not target.is_relative_to(root) or target == root:
            raise InvalidModel(f"{label} names external data outside the model's folder")
        if not target.is_file():
            raise InvalidModel(f"{label} names external data '{location}' that is not there")
        found.append(target)
    return found


def _probe_model(domain: str, version: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", version)]
    if domain != "ai.onnx":
        opsets = [helper.make_opsetid("", 13), helper.make_opsetid(domain, version)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "opset_probe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _accepts(domain: str, version: int) -> bool:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(
            _probe_model(domain, version).SerializeToString(),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
    except Exception:  # onnxruntime raises several unrelated types
        return False
    return True


@functools.cache
def max_supported_opset(domain: str) -> int:
    """The newest opset of ``domain`` the installed onnxruntime loads (probed once)."""
    low, high = 1, _PROBE_CEILING
    if _accepts(domain, high):
        return high
    while high - low > 1:
        middle = (low + high) // 2
        if _accepts(domain, middle):
            low = middle
        else:
            high = middle
    return low


def check_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opset imports by domain; refuse one newer than onnxruntime supports."""
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        domain = ONNX_DOMAINS.get(entry.domain, entry.domain)
        opsets[domain] = int(entry.version)
        if entry.domain in ONNX_DOMAINS:
            ceiling = max_supported_opset(domain)
            if entry.version > ceiling:
                raise InvalidModel(
                    f"opset {entry.version} of domain {domain} is newer than onnxruntime "
                    f"{ort.__version__} supports (up to {ceiling})"
                )
    if "ai.onnx" not in opsets and model.graph.node:
        raise InvalidModel("the model imports no ai.onnx opset")
    return opsets


def _load_proto(path: Path) -> onnx.ModelProto:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidModel(f"cannot read the model file: {exc.strerror}") from None
    if size == 0:
        raise InvalidModel("the model file is empty")
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidModel(f"not an ONNX model (protobuf parse failed): {_reason(exc)}") from None


def _checker_finding(path: Path) -> str | None:
    """What ``onnx.checker`` (full check) finds wrong with the model, or None.

    The checker is stricter than onnxruntime in places: it wants nodes in topological order
    (onnxruntime sorts them itself; float16 converters append their Casts at the end), and
    its strict shape inference refuses some graphs onnxruntime runs. So a finding refuses a
    model only when onnxruntime cannot load and run it either.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError and protobuf errors
        reason = _reason(exc)
        if "topologically sorted" in reason:
            return (
                "onnx.checker: the nodes are not in topological order "
                "(onnxruntime orders them itself)"
            )
        return f"onnx.checker: {reason}"
    return None


def _with_finding(message: str, finding: str | None) -> str:
    return message if finding is None else f"{message} ({finding})"


def _test_session(path: Path, finding: str | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # Failures are reported in the refusal; onnxruntime's own log line would only repeat it.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise InvalidModel(
            _with_finding(f"onnxruntime could not load the model: {_reason(exc)}", finding)
        ) from None


def validate_model_file(path: Path, deadline: Deadline | None = None) -> ModelSignature:
    """Run every check on the model at ``path`` (blocking); the first failure is a 422.

    The test run is terminated at ``deadline`` (a ``StepTimedOut``, also a 422).

    Order: parse, external data confined to the model's own folder (before anything follows
    a data path), opsets the installed onnxruntime supports, ``onnx.checker`` full check, a
    CPU test session and one warm-up run on zeros. What the checker finds refuses the model
    only when onnxruntime fails too (the refusal then names both); otherwise it is a warning.
    """
    model = _load_proto(path)
    check_external_data(model, path.parent)
    opsets = check_opsets(model)
    ir_version = int(model.ir_version)
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    del model  # the checker and the session read the file themselves: free the copy first
    finding = _checker_finding(path)
    session = _test_session(path, finding)
    inputs = [_spec(arg) for arg in session.get_inputs()]
    outputs = [_spec(arg) for arg in session.get_outputs()]
    run = deadline.run if deadline is not None else no_deadline
    try:
        run(session, warmup_feeds(inputs, 1))
    except StepTimedOut:
        raise
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise InvalidModel(
            _with_finding(f"warm-up inference on zeros failed: {_reason(exc)}", finding)
        ) from None
    return ModelSignature(
        inputs=inputs,
        outputs=outputs,
        opsets=opsets,
        ir_version=ir_version,
        producer=producer,
        warnings=() if finding is None else (finding,),
    )
