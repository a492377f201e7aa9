"""The ``optimize`` form field of an upload: its options, and the optimised staged version."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import ValidationError

from app.errors import BadRequest
from app.optimize.loading import samples_for
from app.optimize.process import run_job
from app.optimize.report import REPORT_FILE, read_report
from app.optimize.step import OptimizeJob
from app.registry.config import ModelConfig, OptimizeConfig
from app.registry.repository import MODEL_FILE, format_config_error


def parse_optimize_field(text: str) -> OptimizeConfig | None:
    """``int8`` (a kind), or a JSON object of options like config.json's ``optimize``."""
    text = text.strip()
    if not text:
        return None
    try:
        doc = orjson.loads(text) if text.startswith("{") else {"to": text}
        return OptimizeConfig.model_validate(doc)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"form field 'optimize' is not valid JSON: {exc}") from None
    except ValidationError as exc:
        detail = format_config_error(exc).removeprefix("invalid config.json: ")
        raise BadRequest(f"form field 'optimize': {detail}") from None


@dataclass(frozen=True, slots=True)
class StagedOptimization:
    """An optimised model in the staging folder, with the files that go beside it."""

    model: Path
    #: (path inside the version folder, staged file): the report, TensorRT's table.
    extras: tuple[tuple[str, Path], ...]
    report: dict[str, object]


def optimize_staged(
    folder: Path,
    name: str,
    staged_model: Path,
    options: OptimizeConfig,
    config: ModelConfig,
    labelled: bool,
    model_dir: Path,
) -> StagedOptimization:
    """Optimise an uploaded model into ``folder`` (created; blocking, in a worker process)."""
    folder.mkdir()
    job = OptimizeJob(
        name=name,
        source=staged_model,
        output=folder,
        options=options,
        config=config,
        labelled=labelled,
        samples=samples_for(options, model_dir),
    )
    run_job(job, background=True)
    extras = tuple(
        (str(path.relative_to(folder)), path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MODEL_FILE
    )
    return StagedOptimization(folder / MODEL_FILE, extras, read_report(folder / REPORT_FILE) or {})
