"""The flags of ``onnx-serve serve``: one per ``Settings`` field, generated from it.

``--grpc-port 0`` sets ``grpc_port``, ``--no-access-log`` clears ``access_log``; the help
is the field's description. A flag given goes into the process environment as the field's
``ONNX_SERVE_*`` variable, so that every worker process reads the same settings (and flags
win over variables already set). ``--models`` is kept as the short name of the repository.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from app.settings import Settings

#: Flags whose name is not the field's.
RENAMED = {"model_repository": "--models"}
#: Other spellings still accepted.
ALIASES = {"model_repository": ["--model-repository"], "model_name": ["--model_name"]}


def _plain(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None``, and whether ``None`` was allowed."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def _help(field: FieldInfo) -> str:
    text = (field.description or "").replace("%", "%%")
    default = field.get_default(call_default_factory=True)
    if default is not None and not isinstance(default, SecretStr) and not isinstance(default, bool):
        text += f" (default: {default})"
    return text


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (see the module's docstring); every default is None (unset)."""
    for name, field in Settings.model_fields.items():
        flags = [RENAMED.get(name, "--" + name.replace("_", "-")), *ALIASES.get(name, [])]
        kind, _ = _plain(field.annotation)
        options: dict[str, Any] = {"dest": name, "default": None, "help": _help(field)}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = [str(c) for c in typing.get_args(kind)]
        elif kind in (int, float):
            options["type"] = kind
        elif kind is Path:
            options["metavar"] = "PATH"
        parser.add_argument(*flags, **options)


def setting_variables(args: argparse.Namespace) -> dict[str, str]:
    """The ``ONNX_SERVE_*`` variables of the setting flags that were given."""
    out: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        out[f"ONNX_SERVE_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return out
