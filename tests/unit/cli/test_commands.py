"""The command table of agent/cli/__init__.py: each group adds exactly the commands the table
names, and running one command imports only its own group."""

from __future__ import annotations

import argparse
import subprocess
import sys

from agent.cli import COMMANDS, GROUPS, build_parser


def commands_of(parser: argparse.ArgumentParser) -> list[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_each_group_adds_exactly_the_commands_the_table_names() -> None:
    for group, commands in GROUPS.items():
        assert commands_of(build_parser(group)) == list(commands), group


def test_the_full_parser_has_every_command_once_in_table_order() -> None:
    assert commands_of(build_parser()) == list(COMMANDS)


def test_building_one_group_imports_no_other_command_module() -> None:
    code = (
        "import sys\n"
        "from agent.cli import build_parser\n"
        "build_parser('run')\n"
        "print(sorted(m for m in sys.modules if m.startswith('agent.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['agent.cli.options', 'agent.cli.run']", out.stdout
