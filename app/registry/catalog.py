"""The model list of ``GET /models``: versions on disk joined with the registry's states."""

from __future__ import annotations

from typing import Any

from app.errors import ServingError
from app.optimize.report import REPORT_FILE, read_report, summary
from app.registry.model import ModelVersion
from app.registry.registry import ModelRegistry
from app.registry.status import ON_DEMAND, ModelState

NOT_SELECTED = "on disk, not selected by the model's version policy"


def repository_index(registry: ModelRegistry) -> list[dict[str, Any]]:
    """The repository index: every version's state and reason, and what a loaded one takes
    in memory."""
    live = {(m.name, str(m.version)): m for m in registry.live()}
    entries: list[dict[str, Any]] = []
    for status in registry.index():
        entry: dict[str, Any] = status.as_dict()
        _add_memory(entry, live.get((status.name, status.version)))
        entries.append(entry)
    return entries


def _add_memory(entry: dict[str, Any], model: ModelVersion | None) -> None:
    if model is not None and entry["state"] == ModelState.READY.value:
        memory = model.extras.get("memory")
        if memory is not None:
            entry["memory"] = memory


def model_catalog(registry: ModelRegistry) -> list[dict[str, Any]]:
    """One entry per model: its state, the reason if it is not ready, and each version."""
    by_name: dict[str, dict[str, dict[str, Any]]] = {}
    for status in registry.index():
        by_name.setdefault(status.name, {})[status.version] = status.as_dict()
    live = {(m.name, str(m.version)): m for m in registry.live()}
    out: list[dict[str, Any]] = []
    for name in sorted(by_name):
        statuses = by_name[name]
        try:
            on_disk = [str(v) for v in registry.repository.versions(name)]
        except ServingError:
            on_disk = []
        model_level = statuses.pop("", None)
        for version in on_disk:
            statuses.setdefault(
                version,
                {
                    "name": name,
                    "version": version,
                    "state": ModelState.UNLOADED.value,
                    "reason": NOT_SELECTED,
                },
            )
        versions = [statuses[v] for v in sorted(statuses, key=int)]
        for entry in versions:
            entry["on_disk"] = entry["version"] in on_disk
            del entry["name"]
            model = live.get((name, entry["version"]))
            _add_memory(entry, model)
            report = _optimization(registry, model, name, entry)
            if report is not None:
                entry["optimization"] = summary(report)
        states = {v["state"] for v in versions}
        if ModelState.READY.value in states:
            state, reason = ModelState.READY.value, ""
        elif model_level is not None:
            state, reason = model_level["state"], model_level["reason"]
        elif ModelState.LOADING.value in states:
            state, reason = ModelState.LOADING.value, ""
        elif ModelState.AVAILABLE.value in states:
            state, reason = ModelState.AVAILABLE.value, ON_DEMAND
        elif ModelState.UNAVAILABLE.value in states:
            state = ModelState.UNAVAILABLE.value
            reason = next(v["reason"] for v in versions if v["state"] == state)
        else:
            state, reason = ModelState.UNLOADED.value, "" if versions else "no versions on disk"
        out.append({"name": name, "state": state, "reason": reason, "versions": versions})
    return out


def _optimization(
    registry: ModelRegistry, model: ModelVersion | None, name: str, entry: dict[str, Any]
) -> dict[str, Any] | None:
    """The optimisation report of a version: the live one's, else the one in its folder."""
    if model is not None:
        report = model.extras.get("optimization")
        return report if isinstance(report, dict) else None
    if not entry["on_disk"]:
        return None
    folder = registry.repository.version_dir(name, int(entry["version"]))
    return read_report(folder / REPORT_FILE)
