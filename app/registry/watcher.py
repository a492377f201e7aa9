"""Repository polling: replicas sharing a model volume converge on what is on disk.

Each poll fingerprints every model folder (config, labels and each version's model file by
inode, size and modification time). A model whose fingerprint changed, and then stayed the
same for one more poll (so a file still being copied in is not loaded half-written), is
reloaded; a model whose folder is gone is unloaded. A reload that fails leaves the versions
already serving in place. Changes this process made itself are recorded as they happen and
not loaded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from app.errors import ModelNotFound, ServingError
from app.registry.installer import ModelInstaller
from app.registry.repository import CONFIG_FILE, LABELS_FILE, ModelRepository

log = logging.getLogger(__name__)

FileStamp = tuple[str, int, int, int]
Fingerprint = tuple[FileStamp, ...]


def _stamp(label: str, path: Path) -> FileStamp | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (label, info.st_ino, info.st_size, info.st_mtime_ns)


def fingerprint(repository: ModelRepository, name: str) -> Fingerprint | None:
    """What identifies a model's files now; None when its folder is gone."""
    try:
        directory = repository.model_dir(name)
        if not directory.is_dir() or directory.is_symlink():
            return None
        versions = repository.versions(name)
        stamps = [_stamp(f, directory / f) for f in (CONFIG_FILE, LABELS_FILE)]
        stamps += [_stamp(str(v), repository.model_file(name, v)) for v in versions]
    except (OSError, ServingError):
        return None
    return tuple(s for s in stamps if s is not None)


def _has_versions(print_: Fingerprint) -> bool:
    return any(label.isdigit() for label, *_ in print_)


class RepositoryWatcher:
    """Polls the repository every ``interval`` seconds and loads or unloads what changed."""

    def __init__(self, installer: ModelInstaller, interval: float) -> None:
        self.installer = installer
        self.registry = installer.registry
        self.repository = installer.repository
        self.interval = interval
        self._handled: dict[str, Fingerprint | None] = {}
        self._pending: dict[str, Fingerprint | None] = {}
        self._task: asyncio.Task[None] | None = None

    def scan(self) -> dict[str, Fingerprint | None]:
        """Fingerprints of every model folder in the repository (blocking)."""
        return {name: fingerprint(self.repository, name) for name in self.repository.model_names()}

    def prime(self) -> None:
        """Take what is on disk now as handled (call before the startup load)."""
        self._handled = self.scan()
        self._pending.clear()

    def refresh(self, name: str) -> None:
        """Record ``name`` as it is on disk now: this process just changed it itself."""
        self._handled[name] = fingerprint(self.repository, name)
        self._pending.pop(name, None)

    def start(self) -> None:
        """Start polling (inside the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="repository-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # a poll must never stop the watcher
                log.exception("repository poll failed")

    async def poll(self) -> list[str]:
        """One poll; returns the models it loaded or unloaded."""
        current = await asyncio.to_thread(self.scan)
        acted: list[str] = []
        for name in sorted(set(current) | set(self._handled) | set(self._pending)):
            seen = current.get(name)
            if seen == self._handled.get(name):  # absent and unknown compare equal (None)
                self._pending.pop(name, None)
                continue
            if name not in self._pending or self._pending[name] != seen:
                self._pending[name] = seen  # changed: act once it holds still for a poll
                continue
            async with self.installer.lock(name):
                now = await asyncio.to_thread(fingerprint, self.repository, name)
                if now != seen:
                    self._pending[name] = now
                    continue
                await self._apply(name, now)
                self._pending.pop(name, None)
                if now is None:
                    self._handled.pop(name, None)
                else:
                    self._handled[name] = now
                acted.append(name)
        return acted

    async def _apply(self, name: str, now: Fingerprint | None) -> None:
        live = any(m.name == name for m in self.registry.live())
        if now is None or not _has_versions(now):
            if live:
                log.info("model %s left the repository: unloading it", name)
                with contextlib.suppress(ModelNotFound):
                    await self.registry.unload(name)
            if now is None:
                self.registry.forget(name)
            return
        log.info("model %s changed on disk: loading it", name)
        try:
            await self.registry.load(name)
        except ServingError as exc:
            log.warning("model %s: %s", name, exc.message)
