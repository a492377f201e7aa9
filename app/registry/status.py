"""What the registry says of a model version: its state, and the repository index's entry."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADED = "UNLOADED"
    #: Not loaded, and loads on its next request (on demand, or evicted).
    AVAILABLE = "AVAILABLE"


#: The reason an AVAILABLE version gives in the repository index.
ON_DEMAND = "loads on its first request"


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """What the repository index reports for one model version."""

    name: str
    version: str
    state: ModelState
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state.value,
            "reason": self.reason,
        }
