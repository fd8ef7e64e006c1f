"""`edgence-agent init`, `run` and `demo`: create a gateway's key and config, run the agent,
or run everything locally with simulated sensors."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Coroutine
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from agent.cli.options import default_config_dir, load
from agent.errors import AgentError

T = TypeVar("T")
LOG_LEVELS = ("debug", "info", "warning", "error")


def example_config() -> str:
    return resources.files("agent").joinpath("resources/agent.example.toml").read_text("utf-8")


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, on uvloop when it is installed (the `fast` extra): a faster event loop for
    the per-packet socket callbacks; the agent behaves the same on either.
    EDGENCE_EVENT_LOOP=asyncio forces asyncio's own loop."""
    if os.environ.get("EDGENCE_EVENT_LOOP") == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _existing_key_address(path: Path, passphrase: str | None) -> str:
    """The address of a key file that init keeps (it never replaces a key)."""
    from agent.attest.keys import load_key_file, to_checksum_address

    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if text.startswith("{") and passphrase is None:
        # An encrypted keystore names its address; no need to ask for the passphrase.
        try:
            return to_checksum_address("0x" + str(json.loads(text)["address"]).removeprefix("0x"))
        except (ValueError, KeyError, TypeError):
            raise AgentError(f"{path} is not a readable keystore") from None
    return load_key_file(path, passphrase).checksum_address


def cmd_init(args: argparse.Namespace) -> int:
    from agent.attest.keys import GatewayKey, write_key_file

    d: Path = args.dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = d / "gateway.key"
    cfg_path = d / "agent.toml"
    if cfg_path.exists() and not args.force:
        raise AgentError(
            f"{cfg_path} already exists",
            fix="pass --force to rewrite the config (the key is never overwritten)",
        )
    passphrase = None
    if args.passphrase_file:
        passphrase = Path(args.passphrase_file).read_text(encoding="utf-8").rstrip("\r\n")
    elif args.encrypt:
        passphrase = getpass.getpass("passphrase for the gateway key: ")
        if passphrase != getpass.getpass("repeat the passphrase: "):
            raise AgentError("the passphrases differ; nothing was written")
    if key_path.exists():
        address = _existing_key_address(key_path, passphrase)
        kept = True
    else:
        key = GatewayKey.generate()
        write_key_file(key_path, key, passphrase)
        address, kept = key.checksum_address, False
    text = example_config()
    text = text.replace("chain_id = 31337", f"chain_id = {args.chain_id}")
    if args.local_broker:
        text = text.replace('url = "mqtt://127.0.0.1:1883"', f'url = "{args.local_broker}"')
    if args.upstream:
        text = text.replace('url = "mqtt://127.0.0.1:1884"', f'url = "{args.upstream}"')
    if passphrase is not None and args.passphrase_file:
        text = text.replace(
            '# passphrase_file = "gateway.pass"',
            f'passphrase_file = "{Path(args.passphrase_file).resolve()}"',
        )
    header = f"# Gateway address (masternode signing key): {address}\n"
    cfg_path.write_text(header + text, encoding="utf-8")
    (d / "data").mkdir(exist_ok=True, mode=0o700)
    state = "kept, existing" if kept else f"new, mode 0600{', encrypted' if passphrase else ''}"
    print(f"gateway key   {key_path} ({state})")
    print(f"config        {cfg_path}")
    print(f"address       {address}")
    print(f"next: edit the config, then `edgence-agent run --config {cfg_path}`")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.logs import setup_logging
    from agent.runtime import Agent, run_until_signalled

    cfg = load(args)
    level = args.log_level or os.environ.get("EDGENCE_LOG_LEVEL") or cfg.log.level
    if level not in LOG_LEVELS:
        raise AgentError(f"EDGENCE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
    setup_logging(level)
    agent = Agent(cfg)
    run_event_loop(run_until_signalled(agent))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo
    from agent.logs import setup_logging

    setup_logging("error", sys.stderr)  # the demo shows refusals itself
    return run_event_loop(run_demo(args.duration, args.rate, keep=args.keep))


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    """`init`, `run` and `demo`; `config` is the parent parser holding --config."""
    s = sub.add_parser("init", help="create the gateway key and a commented config")
    s.add_argument(
        "--dir",
        type=Path,
        default=default_config_dir(),
        help="where to write agent.toml, gateway.key and data/ (default: %(default)s)",
    )
    s.add_argument(
        "--encrypt", action="store_true", help="encrypt the key with a passphrase (asked twice)"
    )
    s.add_argument("--passphrase-file", help="encrypt with the passphrase in this file")
    s.add_argument("--chain-id", type=int, default=31337)
    s.add_argument("--local-broker", help="mqtt://HOST:PORT of the sensors' broker")
    s.add_argument("--upstream", help="mqtt[s]://HOST:PORT of the upstream broker")
    s.add_argument("--force", action="store_true", help="rewrite an existing agent.toml")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("run", parents=[config], help="run the agent until SIGINT/SIGTERM")
    s.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="overrides $EDGENCE_LOG_LEVEL and log.level in the config",
    )
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("demo", help="run everything locally with simulated sensors")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    s.add_argument("--keep", action="store_true", help="keep the throwaway work dir")
    s.set_defaults(fn=cmd_demo)
