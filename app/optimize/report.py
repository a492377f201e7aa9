"""``optimization.json``: the report kept beside an optimised model, and its short form."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

REPORT_FILE = "optimization.json"


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` durably (the folder it is in is renamed into place afterwards)."""
    with open(path, "wb") as out:
        out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        out.flush()
        os.fsync(out.fileno())


def read_report(path: Path) -> dict[str, Any] | None:
    """The report at ``path``; None when there is none or it cannot be read as one."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /models`` shows of a report: the kind, the verdict and the headline figures."""
    outputs = report.get("accuracy", {}).get("outputs", {})
    speed = report.get("speed", {}).get("batches", [])
    out: dict[str, Any] = {
        "kind": report.get("kind"),
        "provider": report.get("provider"),
        "created": report.get("created"),
        "accuracy": {
            name: {
                key: figures[key]
                for key in ("top1_agreement", "agreement", "relative_error")
                if key in figures
            }
            for name, figures in outputs.items()
        },
        "speedup": {str(b["batch"]): b["speedup"] for b in speed},
    }
    if "reused" in report:
        out["reused"] = report["reused"]
    return out
