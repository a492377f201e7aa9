"""What an install writes (staged files, the plan) and what it reports of each version."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.registry.config import OptimizeConfig
from app.registry.repository import MODEL_FILE
from app.registry.validation import ModelSignature


class Stage:
    """One staging folder: what an install writes before it is moved into the repository."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files = 0

    def new_model_path(self) -> Path:
        """A path for one uploaded model file, in a folder of its own."""
        self._files += 1
        folder = self.directory / f"file-{self._files}"
        folder.mkdir()
        return folder / MODEL_FILE

    def path(self, name: str) -> Path:
        return self.directory / name


@dataclass(frozen=True, slots=True)
class VersionFile:
    """A staged model file and the version it becomes (None: the next free number)."""

    path: Path
    version: int | None = None
    #: Files placed beside the model: (path inside the version folder, staged file).
    extras: tuple[tuple[str, Path], ...] = ()
    #: The report of an optimised version, for the install's answer.
    optimization: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class InstallPlan:
    """What one install writes: model files, and optionally the model's config and labels."""

    name: str
    files: list[VersionFile] = field(default_factory=list)
    config: bytes | None = None
    labels: str | None = None
    overwrite: bool = False
    #: Also install an optimised copy of the (single) file as the next version.
    optimize: OptimizeConfig | None = None


@dataclass(frozen=True, slots=True)
class InstalledVersion:
    """A version an install put on disk and how the registry took it."""

    name: str
    version: int
    state: str
    reason: str
    replaced: bool
    signature: ModelSignature
    optimization: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "version": str(self.version),
            "state": self.state,
            "reason": self.reason,
            "replaced": self.replaced,
            **self.signature.as_dict(),
        }
        if self.optimization is not None:
            out["optimization"] = self.optimization
        return out
