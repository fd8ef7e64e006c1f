"""The options several commands share: the one `--config` argument and how a command finds
its config (--config, else $EDGENCE_CONFIG, else the first default file that exists)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig

SYSTEM_CONFIG = Path("/etc/edgence-agent/agent.toml")
ENV = "EDGENCE_CONFIG"


def default_config_dir() -> Path:
    """Where `init` writes by default: /etc/edgence-agent for root, else the user's config dir."""
    if os.geteuid() == 0:
        return SYSTEM_CONFIG.parent
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "edgence-agent"


def default_configs() -> list[Path]:
    """The files looked at, in order, when neither --config nor $EDGENCE_CONFIG names one."""
    user = default_config_dir() / "agent.toml"
    return [user] if user == SYSTEM_CONFIG else [user, SYSTEM_CONFIG]


def config_parent() -> argparse.ArgumentParser:
    """A parent parser holding `--config`; every command that reads a config uses it."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"config file (default: ${ENV}, else the first of "
        f"{', '.join(str(c) for c in default_configs())} that exists)",
    )
    return p


def find_config(args: argparse.Namespace) -> tuple[Path, str]:
    """The config file the command reads and where that choice came from (for messages).
    Raises ConfigError when nothing names one and no default file exists."""
    if args.config is not None:
        return Path(args.config), "--config"
    env = os.environ.get(ENV)
    if env:
        return Path(env), ENV
    candidates = default_configs()
    for c in candidates:
        if c.exists():
            return c, "default"
    raise ConfigError(
        " or ".join(str(c) for c in candidates),
        None,
        "no config file found",
        fix=f"name one with --config FILE or {ENV}=FILE, or create one with `edgence-agent init`",
    )


def load(args: argparse.Namespace) -> AgentConfig:
    """The typed config the command's --config (or $EDGENCE_CONFIG, or a default) names."""
    from agent.config import load_config

    path, source = find_config(args)
    if not path.exists():
        origin = {"--config": "given with --config", ENV: f"from ${ENV}"}.get(source, "default")
        raise ConfigError(
            str(path),
            None,
            f"config file not found ({origin})",
            fix=f"name another with --config FILE or {ENV}=FILE, or create it with "
            f"`edgence-agent init --dir {path.parent}`",
        )
    return load_config(path)
