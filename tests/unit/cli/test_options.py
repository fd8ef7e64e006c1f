"""Every command that reads a config finds it the same way (--config, else $EDGENCE_CONFIG,
else a default file), and when it finds none it says so naming --config and EDGENCE_CONFIG."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.options import SYSTEM_CONFIG

from .test_run import cli

COMMANDS = [
    ["run"],
    ["pair", "dev-1", "--no-wait"],
    ["devices", "list"],
    ["devices", "show", "dev-1"],
    ["devices", "revoke", "dev-1"],
    ["devices", "rotate-key", "dev-1"],
    ["election", "status"],
    ["masternode", "status"],
]


def run_without_config(
    args: list[str], tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGENCE_")}
    clean["XDG_CONFIG_HOME"] = str(tmp_path / "empty")  # no user config
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def no_default_config() -> None:
    # The user's default is under the empty XDG_CONFIG_HOME that run_without_config sets.
    if SYSTEM_CONFIG.exists():
        pytest.skip(f"this machine has {SYSTEM_CONFIG}: the commands would read it")


@pytest.mark.usefixtures("no_default_config")
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_a_command_without_any_config_names_the_option_and_the_variable(
    args: list[str], tmp_path: Path
) -> None:
    r = run_without_config(args, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.splitlines()
    assert err[0].startswith("edgence-agent: error: ") and "no config file found" in err[0]
    assert str(SYSTEM_CONFIG) in err[0]
    assert err[1] == (
        "edgence-agent: fix: name one with --config FILE or EDGENCE_CONFIG=FILE, "
        "or create one with `edgence-agent init`"
    )
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_a_missing_file_from_edgence_config_says_where_it_came_from(
    args: list[str], tmp_path: Path
) -> None:
    missing = tmp_path / "gone" / "agent.toml"
    r = run_without_config(args, tmp_path, EDGENCE_CONFIG=str(missing))
    assert r.returncode == 2
    assert f"edgence-agent: error: {missing}: config file not found (from $EDGENCE_CONFIG)" in (
        r.stderr
    )
    assert "--config FILE or EDGENCE_CONFIG=FILE" in r.stderr
    assert f"edgence-agent init --dir {missing.parent}" in r.stderr


def test_config_given_with_the_option_wins_over_the_variable(tmp_path: Path) -> None:
    d = tmp_path / "etc"
    assert cli("init", "--dir", str(d), cwd=tmp_path).returncode == 0
    r = run_without_config(
        ["devices", "list", "--config", str(d / "agent.toml")],
        tmp_path,
        EDGENCE_CONFIG=str(tmp_path / "elsewhere.toml"),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 device(s)"
    from_env = run_without_config(
        ["devices", "list"], tmp_path, EDGENCE_CONFIG=str(d / "agent.toml")
    )
    assert from_env.returncode == 0 and from_env.stdout == r.stdout


@pytest.mark.usefixtures("no_default_config")
def test_doctor_without_any_config_fails_its_config_line_with_the_same_fix(tmp_path: Path) -> None:
    r = run_without_config(["doctor"], tmp_path)
    assert r.returncode == 1
    (line,) = r.stdout.splitlines()
    assert line.startswith("FAIL  config     ") and "no config file found" in line
    assert line.endswith(
        "-- fix: name one with --config FILE or EDGENCE_CONFIG=FILE, "
        "or create one with `edgence-agent init`"
    )


def test_every_config_reading_command_has_the_same_config_option() -> None:
    from agent.cli import build_parser

    helps = set()
    for args in [*COMMANDS, ["doctor"], ["status"]]:
        sub = build_parser()
        for word in args:
            subs = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            if not subs:
                break
            sub = subs[0].choices[word]
        (opt,) = [a for a in sub._actions if "--config" in a.option_strings]
        helps.add((opt.default, opt.help))
    assert len(helps) == 1
    ((default, help_text),) = helps
    assert default is None and "$EDGENCE_CONFIG" in str(help_text)
