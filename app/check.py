"""``onnx-serve check``: the validation an upload gets, run offline, with a readable report."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import orjson

from app.errors import InvalidModel, ServingError
from app.registry.model import TensorSpec
from app.registry.repository import parse_config
from app.registry.validation import ModelSignature, validate_model_file


def _table(specs: list[TensorSpec]) -> list[str]:
    width = max((len(s.name) for s in specs), default=0)
    return [f"  {s.name:<{width}}  {s.datatype:<5}  {list(s.shape)}" for s in specs]


def report(path: Path, signature: ModelSignature) -> str:
    """The signature as the lines ``check`` prints."""
    opsets = ", ".join(f"{domain} {version}" for domain, version in signature.opsets.items())
    batch = signature.max_batch_size
    lines = [
        f"OK: {path} would be accepted",
        f"  ir_version {signature.ir_version}; opsets: {opsets or 'none'}"
        + (f"; producer: {signature.producer}" if signature.producer else ""),
        f"  max_batch_size: {batch}"
        + (" (every tensor has a dynamic first dimension)" if batch else " (no batch dimension)"),
        "inputs:",
        *_table(signature.inputs),
        "outputs:",
        *_table(signature.outputs),
        *(f"warning: {warning}" for warning in signature.warnings),
    ]
    return "\n".join(lines)


def run_check(model: str, config: str | None, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Validate ``model`` (and ``config``); print its signature, or why it would be refused."""
    path = Path(model)
    try:
        if not path.is_file():
            raise InvalidModel(f"{model}: no such file")
        signature = validate_model_file(path)
        if config is not None:
            settings = parse_config(Path(config).read_bytes())
            wanted = settings.max_batch_size or 0
            if wanted > 0 and signature.max_batch_size == 0:
                raise InvalidModel(
                    f"max_batch_size is {wanted} but not every input and output has a dynamic "
                    "first dimension"
                )
    except ServingError as exc:
        print(f"refused: {exc.message}", file=err)
        return 1
    except OSError as exc:
        print(f"refused: cannot read {exc.filename}: {exc.strerror}", file=err)
        return 1
    if as_json:
        out.write(orjson.dumps({"ok": True, **signature.as_dict()}).decode() + "\n")
    else:
        print(report(path, signature), file=out)
    return 0
