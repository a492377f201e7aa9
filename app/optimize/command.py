"""``onnx-serve optimize``: the optimisation step offline, writing a version folder.

The output folder receives ``model.onnx`` and ``optimization.json``; copied into a model's
folder as a new version (``models/<name>/<N>/``) it is served as an optimised version.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson
from pydantic import ValidationError

from app.errors import InvalidModel, ServingError
from app.optimize.errors import OptimizationRefused
from app.optimize.process import run_job
from app.optimize.samples import default_samples
from app.optimize.step import OptimizeJob
from app.registry.config import ModelConfig, OptimizeConfig
from app.registry.repository import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    VERSION_PATTERN,
    format_config_error,
    parse_config,
)


@dataclass(frozen=True, slots=True)
class Source:
    """The model file to optimise and the model folder around it (None for a lone file)."""

    model_file: Path
    model_dir: Path | None


def find_source(target: Path, version: int | None) -> Source:
    """Resolve a model file, a version folder or a model folder (its latest version)."""
    if target.is_file():
        folder = target.parent
        is_version = VERSION_PATTERN.fullmatch(folder.name) is not None
        return Source(target, folder.parent if is_version else None)
    if not target.is_dir():
        raise InvalidModel(f"{target}: no such file or folder")
    if (target / MODEL_FILE).is_file() and version is None:
        is_version = VERSION_PATTERN.fullmatch(target.name) is not None
        return Source(target / MODEL_FILE, target.parent if is_version else target)
    versions = sorted(
        int(p.name)
        for p in target.iterdir()
        if VERSION_PATTERN.fullmatch(p.name) and (p / MODEL_FILE).is_file()
    )
    if not versions:
        raise InvalidModel(f"{target} holds no model.onnx and no <version>/model.onnx")
    chosen = version if version is not None else versions[-1]
    if chosen not in versions:
        raise InvalidModel(f"{target} has no version {chosen} (it has {versions})")
    return Source(target / str(chosen) / MODEL_FILE, target)


def options_from(fields: dict[str, Any]) -> OptimizeConfig:
    """Validated options, a 422 naming each bad one."""
    try:
        return OptimizeConfig.model_validate(fields)
    except ValidationError as exc:
        raise InvalidModel(format_config_error(exc).replace("config.json", "optimize")) from None


def _claim_output(output: Path) -> Path:
    """A fresh folder beside ``output`` to write into (renamed to ``output`` when done)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise InvalidModel(f"{output} exists and is not an empty folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    unfinished = output.parent / f".{output.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    unfinished.mkdir()
    return unfinished


def run_optimize(
    model: str,
    output: str,
    fields: dict[str, Any],
    *,
    version: int | None,
    config_path: str | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
) -> int:
    """Optimise ``model`` into ``output``; print the report, or why it was refused."""
    target = Path(output)
    try:
        options = options_from(fields)
        source = find_source(Path(model), version)
        model_dir = source.model_dir
        config_file = (
            Path(config_path)
            if config_path
            else (model_dir / CONFIG_FILE if model_dir is not None else None)
        )
        if config_path and not Path(config_path).is_file():
            raise InvalidModel(f"{config_path}: no such file")
        config = (
            parse_config(config_file.read_bytes())
            if config_file is not None and config_file.is_file()
            else ModelConfig()
        )
        samples = (
            Path(options.samples)
            if options.samples
            else (default_samples(model_dir) if model_dir is not None else None)
        )
        if samples is not None and not samples.exists():
            raise InvalidModel(f"samples {samples}: no such file or folder")
        unfinished = _claim_output(target)
        job = OptimizeJob(
            name=model_dir.name if model_dir is not None else source.model_file.stem,
            source=source.model_file,
            output=unfinished,
            options=options,
            config=config,
            labelled=model_dir is not None and (model_dir / LABELS_FILE).is_file(),
            samples=samples,
        )
        try:
            report = run_job(job)
            if target.is_dir():
                target.rmdir()
            os.rename(unfinished, target)
        finally:
            shutil.rmtree(unfinished, ignore_errors=True)
    except OptimizationRefused as exc:
        print(f"refused: {exc.message}", file=err)
        if as_json:
            out.write(orjson.dumps({"ok": False, **exc.report}).decode() + "\n")
        return 1
    except ServingError as exc:
        print(f"failed: {exc.message}", file=err)
        return 1
    except OSError as exc:
        print(f"failed: {exc.filename}: {exc.strerror}", file=err)
        return 1
    if as_json:
        out.write(orjson.dumps({"ok": True, **report}).decode() + "\n")
    else:
        print(describe(target, report), file=out)
    return 0


def _size(size: int | None) -> str:
    return "?" if size is None else f"{size / 1024:.1f} KiB"


def describe(folder: Path, report: dict[str, Any]) -> str:
    """The report as the lines ``optimize`` prints."""
    limits = report["limits"]
    samples = report["samples"]
    checked = f"{samples['checked']} checked"
    if samples["calibration"] is not None:
        checked = f"{samples['calibration']} for calibration, {checked}"
    lines = [
        f"OK: {report['kind']} version for {report['provider']} written to {folder}",
        f"  tool: {report['tool']}",
        f"  size: {_size(report['source']['size_bytes'])} -> {_size(report['size_bytes'])}",
        f"  samples: {samples['source']}; {checked}",
        f"  accuracy (limits: top-1 agreement >= {limits['min_agreement']:g} on class scores, "
        f"relative error <= {limits['max_relative_error']:g} elsewhere):",
    ]
    for name, figures in report["accuracy"]["outputs"].items():
        parts = []
        if "top1_agreement" in figures:
            parts += [
                f"top-1 agreement {figures['top1_agreement']:.4f}",
                f"top-5 overlap {figures['top5_overlap']:.4f}",
            ]
        if "agreement" in figures:
            parts.append(f"equal {figures['agreement']:.4f}")
        if figures["relative_error"] is not None:
            parts += [
                f"relative error {figures['relative_error']:.3g}",
                f"max abs error {figures['max_abs_error']:.3g}",
            ]
        lines.append(f"    {name}: {', '.join(parts)}")
    speed = report["speed"]
    lines.append(f"  median latency on {speed['provider']} (original -> optimised):")
    for batch in speed["batches"]:
        lines.append(
            f"    batch {batch['batch']}: {batch['original_ms']:.4g} ms -> "
            f"{batch['optimized_ms']:.4g} ms ({batch['speedup']:.2f}x)"
        )
    lines += [f"  warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)
