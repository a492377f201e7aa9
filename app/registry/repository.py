"""The model repository: what is on disk, with validated names and paths."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from app.errors import InvalidModel, InvalidName, ModelNotFound
from app.registry.config import ModelConfig, VersionPolicy

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
STAGING_DIR = ".staging"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe model name, else raise a 400."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise InvalidName(
            f"invalid model name {name!r:.80}: use 1-64 ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def parse_version(version: str | int) -> int:
    """Return a positive integer version, else raise a 400."""
    text = str(version)
    if VERSION_PATTERN.fullmatch(text) is None:
        raise InvalidName(f"invalid model version {text!r:.40}: use a positive integer")
    return int(text)


def format_config_error(exc: ValidationError) -> str:
    """One line naming each offending key of a config, for a 422."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"'{where}': {err['msg']}")
    return "invalid config.json: " + "; ".join(parts)


def config_object(raw: bytes | str, what: str = "config.json") -> dict[str, Any]:
    """Parse config text that must be a JSON object, as a 422 naming ``what`` otherwise."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidModel(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidModel(f"{what} must hold a JSON object")
    return doc


def parse_config(raw: bytes | str) -> ModelConfig:
    """Parse and validate config JSON text, raising a 422 that names each bad key."""
    doc = config_object(raw)
    try:
        return ModelConfig.model_validate(doc)
    except ValidationError as exc:
        raise InvalidModel(format_config_error(exc)) from None


class ModelRepository:
    """Models under ``root`` laid out as ``<name>/<version>/model.onnx``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def staging(self) -> Path:
        return self.root / STAGING_DIR

    def model_dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(version)

    def model_file(self, name: str, version: int) -> Path:
        return self.version_dir(name, version) / MODEL_FILE

    def model_names(self) -> list[str]:
        """Names of the model folders on disk, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and NAME_PATTERN.fullmatch(p.name)
        )

    def has_model(self, name: str) -> bool:
        return self.model_dir(name).is_dir()

    def versions(self, name: str) -> list[int]:
        """Versions of ``name`` that hold a model file, ascending."""
        directory = self.model_dir(name)
        if not directory.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        found = []
        for p in directory.iterdir():
            if p.is_dir() and VERSION_PATTERN.fullmatch(p.name) and (p / MODEL_FILE).is_file():
                found.append(int(p.name))
        return sorted(found)

    def config(self, name: str) -> ModelConfig:
        """The model's validated config; defaults when it has no config.json."""
        path = self.model_dir(name) / CONFIG_FILE
        if not path.is_file():
            return ModelConfig()
        return parse_config(path.read_bytes())

    def labels(self, name: str) -> list[str] | None:
        """Class labels from labels.txt, one per line, or None."""
        path = self.model_dir(name) / LABELS_FILE
        if not path.is_file():
            return None
        lines = path.read_text(encoding="utf-8").splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return [line.strip() for line in lines]

    def select_versions(self, name: str, policy: VersionPolicy) -> list[int]:
        """The versions on disk that ``policy`` serves."""
        available = self.versions(name)
        if policy.policy == "all":
            return available
        if policy.policy == "specific":
            return [v for v in available if v in set(policy.versions)]
        return available[-policy.num_versions :]

    def new_staging_entry(self) -> Path:
        """A fresh folder in the staging dir, named after this host and process."""
        self.staging.mkdir(parents=True, exist_ok=True)
        entry = self.staging / f"{_host_label()}--{os.getpid()}--{secrets.token_hex(6)}"
        entry.mkdir()
        return entry

    def clean_staging(self) -> None:
        """Remove what interrupted writes left in the staging folder.

        Replicas may share the repository, so an entry is only removed when its writer is
        gone: a dead process of this host (or this very process id, reused after a restart),
        or any writer silent for ``STAGING_MAX_AGE_SECONDS``.
        """
        if not self.staging.is_dir():
            return
        for entry in self.staging.iterdir():
            if _abandoned(entry):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        try:
            self.staging.rmdir()
        except OSError:
            pass  # not empty: another replica is writing


STAGING_MAX_AGE_SECONDS = 24 * 3600


def _host_label() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def _abandoned(entry: Path) -> bool:
    head, _, _token = entry.name.rpartition("--")
    host, _, pid_text = head.rpartition("--")
    if host == _host_label() and pid_text.isdigit():
        pid = int(pid_text)
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    if not pid_text.isdigit():
        return True  # not written by this service's staging code
    try:
        newest = max([entry.lstat().st_mtime] + [p.lstat().st_mtime for p in entry.rglob("*")])
    except OSError:
        return True
    return time.time() - newest > STAGING_MAX_AGE_SECONDS


# ---- one model at the root (KServe's storage layout) ---------------------------------------


class SingleModelRepository(ModelRepository):
    """One model, served as ``name``, whose files sit at the repository root.

    This is how KServe's storage initializer lays a model out: ``model.onnx`` (or a lone
    ``*.onnx``) at the root is version 1; without one, ``<version>/model.onnx`` folders are.
    """

    def __init__(self, root: Path, name: str) -> None:
        super().__init__(root)
        self.name = validate_name(name)

    def _flat_model(self) -> Path | None:
        """The model file at the root itself, when the root is not split into versions."""
        named = self.root / MODEL_FILE
        if named.is_file():
            return named
        lone = [p for p in self.root.glob("*.onnx") if p.is_file()] if self.root.is_dir() else []
        return lone[0] if len(lone) == 1 else None

    def model_dir(self, name: str) -> Path:
        if validate_name(name) != self.name:
            raise ModelNotFound(
                f"Request for unknown model: '{name}' is not found (only '{self.name}' is served)"
            )
        return self.root

    def model_names(self) -> list[str]:
        return [self.name] if self.root.is_dir() else []

    def has_model(self, name: str) -> bool:
        return name == self.name and self.root.is_dir()

    def versions(self, name: str) -> list[int]:
        self.model_dir(name)
        if self._flat_model() is not None:
            return [1]
        return super().versions(name)

    def version_dir(self, name: str, version: int) -> Path:
        if version == 1 and self._flat_model() is not None:
            return self.model_dir(name)
        return super().version_dir(name, version)

    def model_file(self, name: str, version: int) -> Path:
        flat = self._flat_model() if version == 1 else None
        if flat is not None:
            self.model_dir(name)
            return flat
        return super().model_file(name, version)


def open_repository(root: Path, model_name: str | None = None) -> ModelRepository:
    """The repository at ``root``: one model named ``model_name`` at its root when given."""
    if model_name:
        return SingleModelRepository(root, model_name)
    return ModelRepository(root)
