"""The whole file (agent/config/load.py): the shipped example loads, file-level refusals
(missing, not TOML, not UTF-8) and unknown top-level tables name the file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from tests.unit.config.helpers import EXAMPLE, EXAMPLE_LINK, MINIMAL, refusal, write


def test_shipped_example_loads_with_its_relative_key_file_beside_it() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway.key_file == EXAMPLE.parent / "gateway.key"
    assert cfg.gateway.data_dir == EXAMPLE.parent / "data"
    # a generated or installed config allowlists no one
    assert cfg.sources.mqtt.allowed_devices == ()
    assert cfg.journal.max_bytes == 256 * 2**20
    assert cfg.journal.max_age_s == 7 * 86400.0


def test_configs_example_is_the_same_file_as_the_packaged_example() -> None:
    assert EXAMPLE_LINK.is_symlink()
    assert os.path.samefile(EXAMPLE_LINK, EXAMPLE)
    linked = load_config(EXAMPLE_LINK)
    assert linked.gateway == load_config(EXAMPLE).gateway


def test_example_copied_elsewhere_resolves_the_key_beside_the_copy(tmp_path: Path) -> None:
    copy = tmp_path / "etc" / "agent.toml"
    copy.parent.mkdir()
    shutil.copyfile(EXAMPLE, copy)
    cfg = load_config(copy)
    assert cfg.path == copy
    assert cfg.gateway.key_file == copy.parent / "gateway.key"
    assert cfg.journal.path == copy.parent / "data" / "journal.sqlite"


def test_relative_config_path_resolves_against_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "sub", MINIMAL)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("sub/agent.toml")
    assert cfg.gateway.key_file == tmp_path.resolve() / "sub" / "gateway.key"
    assert cfg.gateway.key_file.is_absolute()


def test_missing_file_names_the_file_and_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)
    assert "edgence-agent init" in str(info.value)


def test_invalid_toml_names_the_file_and_the_parse_error(tmp_path: Path) -> None:
    path, message = refusal(tmp_path, '[gateway]\nkey_file = "unterminated\n')
    assert str(path) in message
    assert "is not valid TOML" in message
    assert "line 2" in message


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'[gateway]\nkey_file = "\xff"\n')
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text", [MINIMAL + "[no_such_table]\nport = 9000\n", "debug = true\n" + MINIMAL]
)
def test_unknown_top_level_entry_is_refused_listing_the_known_tables(
    tmp_path: Path, text: str
) -> None:
    path, message = refusal(tmp_path, text)
    assert str(path) in message
    key = "no_such_table" if "[no_such_table]" in text else "debug"
    assert f"[{key}] is not a known key" in message
    listed = message.split("allowed here: ")[1].split(", ")
    assert listed == sorted(listed)
    assert {
        "bridge",
        "chain",
        "election",
        "enrollment",
        "forward",
        "gateway",
        "journal",
        "log",
        "metrics",
        "pipeline",
        "sources",
    } <= set(listed)
