"""What the config tests share: the example's path, the smallest valid config, and helpers that
write a config and load it or return the message of its refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "agent" / "resources" / "agent.example.toml"
EXAMPLE_LINK = ROOT / "configs" / "agent.example.toml"
MINIMAL = '[gateway]\nkey_file = "gateway.key"\n'


def write(directory: Path, text: str, name: str = "agent.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> AgentConfig:
    return load_config(write(tmp_path, text))


def refusal(tmp_path: Path, text: str) -> tuple[Path, str]:
    """The config file written and the message of the ConfigError loading it raises."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    return path, str(info.value)
