from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import InvalidName, ModelNotFound
from app.registry.config import VersionPolicy
from app.registry.repository import ModelRepository, parse_version, validate_name
from tests.onnx_models import identity, write_model


@pytest.mark.parametrize("name", ["digits", "a", "resnet-50_v1.2", "A" * 64])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../x", "/etc", "a/b", ".", "..", ".hidden", "a\0b", "A" * 65, "mod\u0435l", "a b",
     "x\n", "-x", "%2e%2e"],
)  # fmt: skip
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_name(name)


@pytest.mark.parametrize("version", ["0", "-1", "01", "1.0", "v1", "", "1 "])
def test_invalid_versions(version: str) -> None:
    with pytest.raises(InvalidName):
        parse_version(version)


def test_scan_finds_models_and_versions(tmp_path: Path) -> None:
    write_model(tmp_path, "a", identity(), 1)
    write_model(tmp_path, "a", identity(), 3)
    (tmp_path / "a" / "2").mkdir()  # a version folder without a model file
    write_model(tmp_path, "b", identity(), 1, labels=["x", "y"])
    (tmp_path / ".staging").mkdir()
    (tmp_path / "not a model").mkdir()
    repo = ModelRepository(tmp_path)
    assert repo.model_names() == ["a", "b"]
    assert repo.versions("a") == [1, 3]
    assert repo.labels("b") == ["x", "y"]
    assert repo.labels("a") is None
    with pytest.raises(ModelNotFound):
        repo.versions("c")


def test_version_policies(tmp_path: Path) -> None:
    for v in (1, 2, 5):
        write_model(tmp_path, "m", identity(), v)
    repo = ModelRepository(tmp_path)
    assert repo.select_versions("m", VersionPolicy()) == [5]
    assert repo.select_versions("m", VersionPolicy(num_versions=2)) == [2, 5]
    assert repo.select_versions("m", VersionPolicy(policy="all")) == [1, 2, 5]
    assert repo.select_versions("m", VersionPolicy(policy="specific", versions=[1, 9])) == [1]


def test_clean_staging_removes_leftovers(tmp_path: Path) -> None:
    (tmp_path / ".staging" / "upload-1").mkdir(parents=True)
    ModelRepository(tmp_path).clean_staging()
    assert not (tmp_path / ".staging").exists()
