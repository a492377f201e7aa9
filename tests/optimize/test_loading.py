"""Load-time copies when the version's folder cannot take them (a read-only model volume)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from app.optimize.loading import optimized_copy
from app.registry.config import ModelConfig
from tests.conftest import SAMPLE_MODELS


def test_the_copy_goes_to_the_temporary_folder_when_the_volume_refuses_it(
    tmp_path: Path,
) -> None:
    model_dir = tmp_path / "digits"
    shutil.copytree(SAMPLE_MODELS / "digits", model_dir)
    # Where the cache folder would go there is a file: creating it fails as on a read-only
    # mount (the tests run as root, whom permissions do not stop).
    (model_dir / "1" / ".optimized").write_text("not a folder")
    config = ModelConfig.model_validate({"optimize": {"to": "graph"}})
    model_file = model_dir / "1" / "model.onnx"
    path, report = optimized_copy("digits", 1, model_file, config, model_dir, labelled=True)
    try:
        assert report["cached"] is False and report["reused"] is False
        assert path.is_file() and path.is_relative_to(tempfile.gettempdir())
        again, second = optimized_copy("digits", 1, model_file, config, model_dir, True)
        assert again == path and second["reused"] is True  # reused while the folder lasts
    finally:
        shutil.rmtree(path.parent.parent, ignore_errors=True)
