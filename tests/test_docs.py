"""The configuration reference names every setting and every config.json key."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from app.registry.config import ModelConfig
from app.settings import Settings

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        out.append(prefix + name)
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out.extend(keys(arg, prefix + name + "."))
    return out


def test_every_setting_is_documented() -> None:
    missing = [n for n in Settings.model_fields if f"`ONNX_SERVE_{n.upper()}`" not in DOC]
    assert not missing, f"add these to docs/configuration.md: {missing}"


def test_every_model_config_key_is_documented() -> None:
    missing = [k for k in keys(ModelConfig) if f"`{k}`" not in DOC]
    assert not missing, f"add these to docs/configuration.md: {missing}"
