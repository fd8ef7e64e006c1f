"""The `edgence-agent` command: one module per command group (run: init/run/demo, status,
doctor, devices: pair and devices, firmware, chain: masternode and election, dapps, contracts:
contracts and keys, verify). A command imports only its own group's module, so `run` does not
load what the other commands need (pyserial, tinydb, urllib's HTTP client)."""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__
from agent.cli.options import config_parent
from agent.errors import AgentError

# Command group (the module agent.cli.<group>) -> the commands it adds, in --help's order.
GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("init", "run", "demo"),
    "doctor": ("doctor",),
    "status": ("status",),
    "chain": ("election", "masternode"),
    "dapps": ("dapps",),
    "contracts": ("keys", "contracts"),
    "verify": ("verify",),
    "devices": ("pair", "devices"),
    "firmware": ("firmware",),
}
# Groups whose commands read no config file: their add_parsers takes no --config parent.
_WITHOUT_CONFIG = frozenset({"verify"})
COMMANDS: dict[str, str] = {cmd: group for group, cmds in GROUPS.items() for cmd in cmds}


def build_parser(group: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of `group`'s commands (what running one needs)."""
    p = argparse.ArgumentParser(
        prog="edgence-agent", description="Edgence masternode gateway agent"
    )
    p.add_argument("--version", action="version", version=f"edgence-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    config = config_parent()
    for name in GROUPS if group is None else (group,):
        module = importlib.import_module(f"agent.cli.{name}")
        if name in _WITHOUT_CONFIG:
            module.add_parsers(sub)
        else:
            module.add_parsers(sub, config)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `edgence-agent run ...` builds run's group only; --help, --version or a typo get them all.
    args = build_parser(COMMANDS.get(argv[0]) if argv else None).parse_args(argv)
    try:
        return int(args.fn(args))
    except AgentError as exc:
        print(f"edgence-agent: error: {exc.description}", file=sys.stderr)
        if exc.fix:
            print(f"edgence-agent: fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["COMMANDS", "GROUPS", "build_parser", "main"]
