"""The `edgence-agent` command: one module per command group (run: init/run/demo, status,
doctor, devices: pair and devices, firmware, chain: masternode and election, dapps, contracts:
contracts and keys, verify)."""

from __future__ import annotations

import argparse
import sys

from agent import __version__
from agent.cli import chain, contracts, dapps, devices, doctor, firmware, run, status, verify
from agent.cli.options import config_parent
from agent.errors import AgentError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgence-agent", description="Edgence masternode gateway agent"
    )
    p.add_argument("--version", action="version", version=f"edgence-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    config = config_parent()
    run.add_parsers(sub, config)
    doctor.add_parsers(sub, config)
    status.add_parsers(sub, config)
    chain.add_parsers(sub, config)
    dapps.add_parsers(sub, config)
    contracts.add_parsers(sub, config)
    verify.add_parsers(sub)
    devices.add_parsers(sub, config)
    firmware.add_parsers(sub, config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except AgentError as exc:
        print(f"edgence-agent: error: {exc.description}", file=sys.stderr)
        if exc.fix:
            print(f"edgence-agent: fix: {exc.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main"]
