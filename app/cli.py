"""Command line: ``onnx-serve serve`` starts the server, ``onnx-serve check`` vets a model,
``onnx-serve optimize`` makes a checked int8, fp16 or graph-optimised version of one."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from functools import partial
from types import FrameType

from pydantic import ValidationError

from app import __version__
from app.log import configure_logging
from app.serve_flags import add_setting_flags, setting_variables
from app.settings import Settings

# Seconds uvicorn waits for connections after the app has drained before cancelling them.
FINAL_CLOSE_SECONDS = 1


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    os.environ.update(setting_variables(args))
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"onnx-serve: invalid settings: {exc}", file=sys.stderr)
        return 2
    if not settings.model_repository.is_dir():
        # A mistyped path would give a server that is ready with nothing to serve.
        print(
            f"onnx-serve: the model repository {settings.model_repository} is not a directory "
            "(--models or ONNX_SERVE_MODEL_REPOSITORY); create it to start without models",
            file=sys.stderr,
        )
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn re-raises the signal that stopped it once its graceful shutdown is done (the
    # drain, see app/api/shutdown.py); by then the work is finished, so exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="onnx-serve-metrics-")
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        # Files from an earlier run would be summed into this one's counters.
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)

    from app.api.connections import (
        ConnectionLimits,
        GuardedHttpProtocol,
        connection_cap,
        raise_open_file_limit,
    )
    from app.workers import serve

    limits = ConnectionLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=connection_cap(settings.max_connections, raise_open_file_limit()),
    )
    return serve(
        "app.main:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=partial(GuardedHttpProtocol, limits=limits),
        log_level=settings.log_level,
        log_config=None,
        access_log=False,
        timeout_keep_alive=max(1, round(settings.keep_alive_seconds)),
        # Client addresses from X-Forwarded-For only behind a proxy the operator named:
        # otherwise any client (even on loopback) could write what the access log shows.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        # The app's drain already gave in-flight requests the grace period.
        timeout_graceful_shutdown=FINAL_CLOSE_SECONDS,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-serve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"onnx-serve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="start the HTTP (and gRPC) server",
        description="Every setting is a flag here or an ONNX_SERVE_* environment variable "
        "(a flag wins); see docs/configuration.md. Keys are better given as variables: "
        "flags show in the process list.",
    )
    add_setting_flags(serve)
    serve.set_defaults(func=_serve)
    check = commands.add_parser(
        "check", help="validate a model file offline and print its signature or the reason"
    )
    check.add_argument("model", help="path to the .onnx file")
    check.add_argument("--config", help="a config.json to validate along with it")
    check.add_argument("--json", action="store_true", help="print the signature as JSON")
    check.set_defaults(func=_check)
    _add_optimize(
        commands.add_parser(
            "optimize",
            help="make an int8, fp16 or graph-optimised version of a model, checked for accuracy",
        )
    )
    return parser


def _add_optimize(optimize: argparse.ArgumentParser) -> None:
    optimize.add_argument(
        "model", help="a model folder (its latest version), version folder or .onnx file"
    )
    optimize.add_argument(
        "--to", required=True, choices=["int8", "int8-static", "fp16", "graph"], help="what to make"
    )
    optimize.add_argument("-o", "--output", required=True, help="folder to write (the new version)")
    optimize.add_argument(
        "--samples", help="an .npz of named inputs or a folder of images (default: the model's)"
    )
    optimize.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], default="cpu")
    optimize.add_argument("--min-agreement", type=float, help="least top-1 agreement (0.99)")
    optimize.add_argument("--max-relative-error", type=float, help="other outputs (0.05)")
    optimize.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="OUTPUT=ERROR",
        help="largest relative error of one output (repeatable)",
    )
    optimize.add_argument("--timeout", type=float, help="seconds the step may take (600)")
    optimize.add_argument("--version", type=int, help="the version of a model folder to use")
    optimize.add_argument("--config", help="a config.json to use instead of the model's")
    optimize.add_argument("--json", action="store_true", help="print the report as JSON")
    optimize.set_defaults(func=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    from app.optimize.command import run_optimize

    fields: dict[str, object] = {"to": args.to, "provider": args.provider}
    for flag, key in (
        ("samples", "samples"),
        ("min_agreement", "min_agreement"),
        ("max_relative_error", "max_relative_error"),
        ("timeout", "timeout_seconds"),
    ):
        if getattr(args, flag) is not None:
            fields[key] = getattr(args, flag)
    tolerances: dict[str, str] = {}
    for item in args.tolerance:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            print(f"failed: --tolerance takes OUTPUT=ERROR, got {item!r}", file=sys.stderr)
            return 2
        tolerances[name] = value
    fields["tolerances"] = tolerances
    return run_optimize(
        args.model,
        args.output,
        fields,
        version=args.version,
        config_path=args.config,
        as_json=args.json,
        out=sys.stdout,
        err=sys.stderr,
    )


def _check(args: argparse.Namespace) -> int:
    from app.check import run_check

    return run_check(args.model, args.config, args.json, sys.stdout, sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
