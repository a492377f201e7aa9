"""Durable, atomic file moves inside the repository, and how to undo them."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it."""
    with open(path, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def keep_copy(source: Path, copy: Path) -> None:
    """Keep ``source``'s current content at ``copy`` (a hard link when the filesystem allows)."""
    try:
        os.link(source, copy)
    except OSError:
        shutil.copy2(source, copy)


def link_new(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` unless something is already there (atomic when linkable)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if target.exists():  # no hard links here: check, then rename
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        os.replace(source, target)


@dataclass
class Undo:
    """How to put the repository back as it was before a failed install."""

    model_dir: Path
    created_model_dir: bool = False
    # (live file, copy of its previous content or None when it did not exist)
    files: list[tuple[Path, Path | None]] = field(default_factory=list)
    created_dirs: list[Path] = field(default_factory=list)

    def revert(self) -> None:
        for target, previous in reversed(self.files):
            if previous is not None:
                os.replace(previous, target)
            else:
                target.unlink(missing_ok=True)
        for directory in [*reversed(self.created_dirs)] + (
            [self.model_dir] if self.created_model_dir else []
        ):
            with suppress(OSError):
                directory.rmdir()
        with suppress(OSError):
            fsync_dir(self.model_dir)
