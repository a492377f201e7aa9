from __future__ import annotations

import pytest

from app.errors import InvalidModel
from app.registry.repository import parse_config


def test_empty_config_gives_defaults() -> None:
    config = parse_config(b"{}")
    assert config.instances.count == 1
    assert config.version_policy.policy == "latest"
    assert config.max_batch_size is None


def test_unknown_key_is_named() -> None:
    with pytest.raises(InvalidModel, match="unknown key 'instances.cuont'"):
        parse_config(b'{"instances": {"cuont": 2}}')


def test_bad_value_names_its_key() -> None:
    with pytest.raises(InvalidModel, match="'instances.count'"):
        parse_config(b'{"instances": {"count": 0}}')


def test_specific_policy_needs_versions() -> None:
    with pytest.raises(InvalidModel, match="versions"):
        parse_config(b'{"version_policy": {"policy": "specific"}}')


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]"])
def test_config_must_be_a_json_object(raw: bytes) -> None:
    with pytest.raises(InvalidModel, match="config.json"):
        parse_config(raw)


def test_provider_list_accepts_names_and_options() -> None:
    config = parse_config(
        b'{"providers": ["cpu", {"name": "CUDAExecutionProvider", "options": {"device_id": 1}}]}'
    )
    assert isinstance(config.providers, list)
    assert config.providers[0] == "cpu"
