"""Optimised versions at load: the file a version is served from, and its report.

A version whose folder holds ``optimization.json`` (made by ``onnx-serve optimize`` or by an
upload with ``optimize``) is an optimised version: it is served as it is, on the providers its
report names. Any other version of a model whose ``config.json`` has an ``optimize`` section
is optimised at load, and the result is kept in the version's folder, under
``.optimized/<kind>-<provider>-<key>/``, where the key digests everything the result depends
on (the model file, the options, the samples, the model's settings and onnxruntime's
version): the next start finds it and loads it at once. A refusal is kept there too, so that
a restart reports it without redoing the work. When the version's folder cannot be written
(a read-only model volume) the copy is made in the system's temporary folder instead, and is
made again after a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort

from app.optimize import targets
from app.optimize.errors import OptimizationFailed, OptimizationRefused
from app.optimize.process import run_job
from app.optimize.report import REPORT_FILE, read_report, write_report
from app.optimize.samples import default_samples
from app.optimize.step import OptimizeJob
from app.registry.config import ModelConfig, OptimizeConfig
from app.registry.model import ModelVersion, load_version
from app.registry.repository import MODEL_FILE
from app.registry.time_limits import Deadline

log = logging.getLogger(__name__)

CACHE_DIR = ".optimized"
#: Unfinished cache entries older than this are a crashed run's and are removed.
STALE_SECONDS = 24 * 3600


def samples_for(options: OptimizeConfig, model_dir: Path) -> Path | None:
    """The samples an optimisation uses: the configured path, else the model folder's.

    A configured path must lead to something inside the model's folder.
    """
    if options.samples is None:
        return default_samples(model_dir) if model_dir.is_dir() else None
    root = model_dir.resolve()
    path = (root / options.samples).resolve()
    if not path.is_relative_to(root) or path == root:
        raise OptimizationFailed(
            f"optimize.samples '{options.samples}' is outside the model's folder"
        )
    if not path.exists():
        raise OptimizationFailed(
            f"optimize.samples '{options.samples}' is not in the model's folder"
        )
    return path


def _update_digest(sha: Any, path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        sha.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as source:
            while chunk := source.read(1 << 20):
                sha.update(chunk)


def cache_key(model_file: Path, config: ModelConfig, labelled: bool, samples: Path | None) -> str:
    """A digest of everything the optimised copy depends on."""
    assert config.optimize is not None
    sha = hashlib.sha256()
    _update_digest(sha, model_file)
    options = config.optimize.model_dump_json(exclude={"timeout_seconds"})
    batching = config.dynamic_batching
    settings = [
        options,
        config.preprocess.model_dump_json() if config.preprocess else "",
        config.postprocess.model_dump_json() if config.postprocess else "",
        str(labelled),
        str(config.max_batch_size),
        str(batching.preferred_batch_sizes if batching else []),
        ort.__version__,
    ]
    sha.update("\n".join(settings).encode())
    if samples is not None and samples.exists():
        _update_digest(sha, samples)
    return sha.hexdigest()[:16]


def _cache_root(version_dir: Path) -> tuple[Path, bool]:
    """Where cache entries of a version go, and whether that is on the model volume."""
    root = version_dir / CACHE_DIR
    try:
        root.mkdir(exist_ok=True)
        probe = root / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
        return root, True
    except OSError:
        digest = hashlib.sha256(str(version_dir.resolve()).encode()).hexdigest()[:16]
        fallback = Path(tempfile.gettempdir()) / "onnx-serve-optimized" / digest
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback, False


def _sweep(root: Path, keep: str) -> None:
    """Remove other keys' entries (an older model or options) and stale unfinished ones."""
    for entry in root.iterdir():
        if entry.name == keep:
            continue
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:
            continue  # removed meanwhile by another process
        if entry.name.startswith(".tmp-") and age < STALE_SECONDS:
            continue  # another process may still be writing it
        shutil.rmtree(entry, ignore_errors=True)


def optimized_copy(
    name: str,
    version: int,
    model_file: Path,
    config: ModelConfig,
    model_dir: Path,
    labelled: bool,
) -> tuple[Path, dict[str, Any]]:
    """The cached optimised copy of a version and its report; made (and kept) when missing."""
    options = config.optimize
    assert options is not None
    samples = samples_for(options, model_dir)
    key = cache_key(model_file, config, labelled, samples)
    root, on_volume = _cache_root(model_file.parent)
    entry = root / f"{options.to}-{options.provider}-{key}"
    report = read_report(entry / REPORT_FILE)
    if report is not None:
        if report.get("refused"):
            raise OptimizationRefused(
                f"{report['error']} (kept from an earlier load; changing the model, its "
                "samples or the optimize limits makes it try again)",
                report,
            )
        log.info(
            "model %s v%d: reusing its %s version made %s (%s)",
            name, version, options.to, report.get("created"), entry,
        )  # fmt: skip
        return entry / MODEL_FILE, {**report, "reused": True, "cached": on_volume}
    unfinished = root / f".tmp-{os.getpid()}-{secrets.token_hex(4)}"
    unfinished.mkdir()
    job = OptimizeJob(
        name=name,
        source=model_file,
        output=unfinished,
        options=options,
        config=config,
        labelled=labelled,
        samples=samples,
    )
    started = time.perf_counter()
    try:
        report = run_job(job, background=True)
    except OptimizationRefused as exc:
        write_report(unfinished / REPORT_FILE, exc.report)
        _finish(unfinished, entry)
        raise
    except BaseException:
        shutil.rmtree(unfinished, ignore_errors=True)
        raise
    _finish(unfinished, entry)
    _sweep(root, entry.name)
    log.info(
        "model %s v%d: made its %s version in %.1fs (%s)%s",
        name, version, options.to, time.perf_counter() - started, entry,
        "" if on_volume else "; the model volume is read-only, so it is made again after a "
        "restart (make it ahead with `onnx-serve optimize`)",
    )  # fmt: skip
    return entry / MODEL_FILE, {**report, "reused": False, "cached": on_volume}


def _finish(unfinished: Path, entry: Path) -> None:
    """Move a finished entry into place; a concurrent writer's identical entry wins."""
    try:
        os.rename(unfinished, entry)
    except OSError:
        shutil.rmtree(unfinished, ignore_errors=True)


def served_file(
    name: str,
    version: int,
    model_file: Path,
    config: ModelConfig,
    model_dir: Path,
    labelled: bool,
) -> tuple[Path, ModelConfig, dict[str, Any] | None]:
    """The file a version is served from, the config to load it with, and its report."""
    report = read_report(model_file.parent / REPORT_FILE)
    path = model_file
    if report is None and config.optimize is not None:
        path, report = optimized_copy(name, version, model_file, config, model_dir, labelled)
    if report is None:
        return model_file, config, None
    providers = report.get("serve", {}).get("providers")
    if providers:
        # The version runs on the hardware it was made and checked for.
        doc = config.model_dump(exclude_none=True)
        doc["providers"] = targets.absolute(providers, path.parent)
        config = ModelConfig.model_validate(doc)
    return path, config, report


def load_served_version(
    name: str,
    version: int,
    path: Path,
    config: ModelConfig,
    *,
    model_dir: Path,
    default_providers: str,
    require_accelerator: bool,
    cpu_quota: int,
    labels: list[str] | None = None,
    deadline: Deadline | None = None,
) -> ModelVersion:
    """``load_version`` of the file the version is served from (optimised when it is)."""
    served, served_config, report = served_file(
        name, version, path, config, model_dir, labels is not None
    )
    model = load_version(
        name,
        version,
        served,
        served_config,
        default_providers=default_providers,
        require_accelerator=require_accelerator,
        cpu_quota=cpu_quota,
        labels=labels,
        warmup_samples=model_dir / config.warmup.samples if config.warmup.samples else None,
        deadline=deadline,
    )
    if report is not None:
        model.extras["optimization"] = report
    return model


def optimization_labels(model: ModelVersion) -> tuple[str, str]:
    """The kind and target provider of a live version (``none`` when it is not optimised)."""
    report = model.extras.get("optimization")
    if not isinstance(report, dict):
        return "none", ""
    return str(report.get("kind", "")), str(report.get("provider", ""))
