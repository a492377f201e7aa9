"""The memory ledger: what each loaded version costs, against a budget per kind of memory.

A version's cost is what its load was measured to add (``app.registry.memory``), and never
less than the size of its files (its weights are somewhere in memory, whatever the allocator
reused). The last measurement of a version is the estimate for its next load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.registry.memory import HOST, MemoryCost
from app.registry.model import ModelVersion

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """The files directly in a version's folder: their total size and what identifies them."""

    size: int
    stamp: tuple[tuple[str, int, int], ...]

    @classmethod
    def read(cls, folder: Path) -> VersionFiles:
        """Stat the regular files of ``folder`` (blocking; no file: size 0)."""
        entries = []
        try:
            with os.scandir(folder) as found:
                for entry in found:
                    if entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        entries.append((entry.name, info.st_size, info.st_mtime_ns))
        except OSError:
            pass
        entries.sort()
        return cls(sum(e[1] for e in entries), tuple(entries))


@dataclass(slots=True)
class Resident:
    """A loaded version and what it is counted for."""

    model: ModelVersion
    cost: MemoryCost


def mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


def device_name(device: str) -> str:
    return "resident" if device == HOST else f"{device.upper()} device"


class MemoryLedger:
    """Costs of the loaded versions against ``budgets`` (bytes by kind of memory)."""

    def __init__(self, budgets: dict[str, int]) -> None:
        self.budgets = budgets
        # By identity: during a reload the old and the new pool of a version both count.
        self._resident: dict[int, Resident] = {}
        self._seen: dict[tuple[str, int], tuple[VersionFiles, MemoryCost]] = {}

    @property
    def enforced(self) -> bool:
        return bool(self.budgets)

    def estimate(self, name: str, version: int, files: VersionFiles) -> tuple[MemoryCost, bool]:
        """What loading these files is expected to take, and whether it was measured: the
        last measurement, else the least it can take (its files; no more than the budget).

        A first load makes room for what it certainly takes and its measurement settles the
        rest, rather than evicting versions for a guess that may be far off."""
        seen = self._seen.get((name, version))
        if seen is not None and seen[0] == files:
            return seen[1], True
        return MemoryCost({HOST: min(files.size, self.budgets.get(HOST, files.size))}), False

    def account(self, model: ModelVersion, files: VersionFiles, measured: MemoryCost) -> MemoryCost:
        """Count ``model`` as loaded; returns the cost it is counted for."""
        cost = measured.merged(MemoryCost({HOST: files.size}))
        self._seen[(model.name, model.version)] = (files, cost)
        self._resident[id(model)] = Resident(model, cost)
        return cost

    def remove(self, model: ModelVersion) -> Resident | None:
        return self._resident.pop(id(model), None)

    def counts(self, name: str, version: int) -> bool:
        """Whether some loaded pool of this version is counted."""
        return any(
            r.model.name == name and r.model.version == version for r in self._resident.values()
        )

    def counted(self, name: str, version: int, device: str) -> int:
        """Bytes of ``device`` counted for the loaded pools of one version."""
        return sum(
            r.cost.amounts.get(device, 0)
            for r in self._resident.values()
            if r.model.name == name and r.model.version == version
        )

    def used(self) -> dict[str, int]:
        """Bytes counted by kind of memory (every budgeted kind present)."""
        out = dict.fromkeys(self.budgets, 0)
        for resident in self._resident.values():
            for device, size in resident.cost.amounts.items():
                out[device] = out.get(device, 0) + size
        return out

    def shortfall(self, extra: MemoryCost) -> dict[str, int]:
        """Bytes over each budget if ``extra`` were added now (empty: it fits)."""
        used = self.used()
        out = {}
        for device, budget in self.budgets.items():
            over = used.get(device, 0) + extra.amounts.get(device, 0) - budget
            if over > 0:
                out[device] = over
        return out

    def too_large(self, cost: MemoryCost) -> str | None:
        """Why ``cost`` can never fit, whatever is evicted (None: it can)."""
        for device, budget in self.budgets.items():
            need = cost.amounts.get(device, 0)
            if need > budget:
                return (
                    f"it takes about {mib(need)} of {device_name(device)} memory, more than "
                    f"the whole budget of {mib(budget)}"
                )
        return None

    def by_last_use(self) -> list[Resident]:
        """Loaded versions, least recently used first."""
        return sorted(self._resident.values(), key=lambda r: r.model.used_at)
