"""``onnx-serve serve``: a flag for every setting (generated from ``Settings``), ``--version``,
and a repository path that does not exist refused before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.cli import build_parser
from app.serve_flags import setting_variables
from app.settings import Settings
from tests.server import serve_until_exit


def serve_help() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": ""},
    )
    return done.stdout


def test_every_setting_is_a_flag() -> None:
    text = serve_help()
    for name in Settings.model_fields:
        flag = "--models" if name == "model_repository" else "--" + name.replace("_", "-")
        assert flag in text, f"no flag for {name}"
    assert "--no-access-log" in text and "--grpc-port" in text


def test_flags_become_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "serve", "--models", str(tmp_path), "--grpc-port", "0", "--no-access-log",
            "--max-request-bytes", "4096", "--log-format", "json", "--cpu-quota", "3",
            "--allow-open-management", "--repository-poll-seconds", "2.5",
            "--server-name", "triton",
        ]
    )  # fmt: skip
    variables = setting_variables(args)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.model_repository == tmp_path
    assert settings.grpc_port == 0 and settings.access_log is False
    assert settings.max_request_bytes == 4096 and settings.log_format == "json"
    assert settings.cpu_quota == 3 and settings.allow_open_management is True
    assert settings.repository_poll_seconds == 2.5 and settings.server_name == "triton"
    # Flags not given leave the environment (and so the defaults) alone.
    assert "ONNX_SERVE_PORT" not in variables


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == f"onnx-serve {__version__}"


def test_a_repository_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "modles"
    done = serve_until_exit(missing, "--port", "0")
    assert done.returncode == 2
    assert f"the model repository {missing} is not a directory" in done.stderr
    bad = serve_until_exit(tmp_path, "--port", "70000")
    assert bad.returncode == 2 and "port" in bad.stderr
