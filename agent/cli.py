"""The `edgence-agent` command: init, run, demo, verify, pair, devices, doctor, status,
election status, masternode."""

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

from agent import __version__
from agent.errors import AgentError, EnvelopeError

T = TypeVar("T")
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_config_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/edgence-agent")
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "edgence-agent"


def default_config() -> Path:
    env = os.environ.get("EDGENCE_CONFIG")
    return Path(env) if env else default_config_dir() / "agent.toml"


def example_config() -> str:
    return resources.files("agent").joinpath("resources/agent.example.toml").read_text("utf-8")


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


def cmd_init(args: argparse.Namespace) -> int:
    from agent.attest.keys import GatewayKey, write_key_file

    d: Path = args.dir
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path = d / "gateway.key"
    cfg_path = d / "agent.toml"
    if cfg_path.exists() and not args.force:
        raise AgentError(
            f"{cfg_path} already exists; pass --force to rewrite the config "
            "(the key is never overwritten)"
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
    from agent.config import load_config
    from agent.logs import setup_logging
    from agent.runtime import Agent, run_until_signalled

    cfg = load_config(args.config)
    level = args.log_level or os.environ.get("EDGENCE_LOG_LEVEL") or cfg.log.level
    if level not in LOG_LEVELS:
        raise AgentError(f"EDGENCE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
    setup_logging(level)
    agent = Agent(cfg)
    run_event_loop(run_until_signalled(agent))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.doctor import DoctorOptions, exit_code, report, run_checks

    checks = run_checks(
        DoctorOptions(config=args.config, chain_url=args.chain_url, timeout=args.timeout)
    )
    print(report(checks, as_json=args.json))
    return exit_code(checks)


def _status_url(args: argparse.Namespace) -> str:
    """--url, else metrics.listen of --config, else of the default config when it is readable
    (/etc/edgence-agent is not, for a normal user), else the default address."""
    from agent.config import MetricsConfig, load_config
    from agent.errors import ConfigError

    if args.url:
        return str(args.url)
    try:
        cfg = load_config(args.config or default_config())
    except ConfigError:
        if args.config is not None:
            raise
        return MetricsConfig().url
    if not cfg.metrics.enabled:
        raise AgentError(f"{cfg.path}: [metrics.enabled] is false; status reads that endpoint")
    return cfg.metrics.url


def cmd_status(args: argparse.Namespace) -> int:
    from agent.status import fetch_health, render, watch

    url = _status_url(args)
    if args.json:
        print(json.dumps(fetch_health(url), indent=1))
        return 0
    if sys.stdout.isatty() and not args.once:
        try:
            watch(url, args.interval)
        except KeyboardInterrupt:
            return 0
        return 0
    print(render(fetch_health(url)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo
    from agent.logs import setup_logging

    setup_logging("error", sys.stderr)  # the demo shows refusals itself
    return run_event_loop(run_demo(args.duration, args.rate, keep=args.keep))


def cmd_verify(args: argparse.Namespace) -> int:
    from agent.attest.observation import verify_envelope

    data = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    text = data.strip()
    if not text:
        raise AgentError("no envelope given")
    # One envelope (possibly pretty-printed), or JSON lines. Each is handed over as text so
    # that the verifier sees it exactly (duplicate keys included).
    try:
        json.loads(text)
        docs = [text]
    except json.JSONDecodeError:
        docs = [line for line in text.splitlines() if line.strip()]
    bad = 0
    for i, doc in enumerate(docs, 1):
        try:
            v = verify_envelope(doc)
        except EnvelopeError as exc:
            bad += 1
            print(f"INVALID #{i}: {exc}")
            continue
        r = v.reading
        print(
            f"ok signer={v.signer} seq={v.gateway_sequence} device={r.device_id} "
            f"sensor={r.sensor} value={r.decimal} unit={r.unit} counter={r.counter} "
            f"timestamp={r.timestamp} chainId={v.domain.chain_id}"
        )
    return 1 if bad else 0


def cmd_election_status(args: argparse.Namespace) -> int:
    """The rounds this agent decided, from its election store (the agent may be running)."""
    from agent.config import load_config
    from agent.election.rounds import ElectionStore, result_docs, status_lines

    cfg = load_config(args.config)
    path = cfg.election.store or cfg.gateway.data_dir / "election.sqlite"
    if not path.exists():
        raise AgentError(
            f"no election store at {path}: is [election] enabled and has the agent run yet?"
        )

    async def show() -> None:
        async with ElectionStore(path) as store:
            if args.json:
                print(json.dumps(await result_docs(store, args.round, args.last), indent=1))
            else:
                print("\n".join(await status_lines(store, args.round, args.last)))

    run_event_loop(show())
    return 0


async def _masternode(args: argparse.Namespace) -> int:
    from agent.chainclient.rpc import RpcClient
    from agent.chainclient.sender import TxSender
    from agent.config import load_config
    from agent.masternode import RegistryClient
    from agent.wiring import load_gateway_key

    cfg = load_config(args.config)
    registry = cfg.masternode.registry
    if registry is None:
        raise AgentError(
            f"{cfg.path}: [masternode] registry is not set: put the MasternodeRegistry's "
            "address there"
        )
    key = load_gateway_key(cfg)
    c = cfg.chain
    async with RpcClient(c.rpc_url, timeout=c.timeout_s) as rpc:
        sender = TxSender(
            rpc,
            key,
            cfg.gateway.chain_id,
            c.store or cfg.gateway.data_dir / "chain.sqlite",
            confirmations=c.confirmations,
            poll_interval_s=c.poll_interval_s,
            fee_bump_percent=c.fee_bump_percent,
        )
        client = RegistryClient(rpc, sender, registry)
        try:
            if args.action != "status":
                await sender.check_chain()
            if args.action == "register":
                vrf = cfg.masternode.vrf_public_key
                if args.vrf_public_key:
                    try:
                        vrf = bytes.fromhex(args.vrf_public_key.removeprefix("0x"))
                    except ValueError:
                        raise AgentError(
                            "--vrf-public-key must be hex (0x02.. or 0x03..)"
                        ) from None
                if vrf is None:
                    raise AgentError(
                        "no VRF public key: pass --vrf-public-key 0x02.. or set "
                        "[masternode] vrf_public_key"
                    )
                rc = await client.register(vrf)
            elif args.action == "heartbeat":
                rc = await client.heartbeat()
            elif args.action == "withdraw":
                rc = await client.withdraw()
            else:
                rc = None
            if rc is not None:
                print(
                    f"{args.action}: transaction {rc['transactionHash']} mined in block "
                    f"{int(rc['blockNumber'], 16)}"
                )
            for line in (await client.status()).describe():
                print(line)
        finally:
            await sender.close()
    return 0


def cmd_masternode(args: argparse.Namespace) -> int:
    return run_event_loop(_masternode(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgence-agent", description="Edgence masternode gateway agent"
    )
    p.add_argument("--version", action="version", version=f"edgence-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

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

    s = sub.add_parser("run", help="run the agent until SIGINT/SIGTERM")
    s.add_argument(
        "--config",
        type=Path,
        default=default_config(),
        help="config file (default: $EDGENCE_CONFIG or %(default)s)",
    )
    s.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="overrides $EDGENCE_LOG_LEVEL and log.level in the config",
    )
    s.set_defaults(fn=cmd_run)

    config_help = "config file (default: $EDGENCE_CONFIG or %(default)s)"
    s = sub.add_parser("doctor", help="check this gateway's setup; one line per check with a fix")
    s.add_argument("--config", type=Path, default=default_config(), help=config_help)
    s.add_argument("--chain-url", help="full node JSON-RPC URL (default: [chain] url, if any)")
    s.add_argument("--timeout", type=float, default=3.0, help="seconds per network check")
    s.add_argument("--json", action="store_true", help="the checks as JSON")
    s.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("status", help="the running agent's health (live on a terminal)")
    s.add_argument(
        "--config",
        type=Path,
        help=f"config naming metrics.listen (default: {default_config()} if readable, "
        "else http://127.0.0.1:9464)",
    )
    s.add_argument("--url", help="the agent's metrics base URL (default: from the config)")
    s.add_argument("--json", action="store_true", help="print the health document as JSON")
    s.add_argument("--once", action="store_true", help="print once even on a terminal")
    s.add_argument("--interval", type=float, default=2.0, help="refresh period (default 2 s)")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("demo", help="run everything locally with simulated sensors")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.add_argument("--rate", type=float, default=2.0, help="frames per second (default 2)")
    s.add_argument("--keep", action="store_true", help="keep the throwaway work dir")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("election", help="validator-election rounds")
    esub = s.add_subparsers(dest="election_command", required=True)
    es = esub.add_parser("status", help="the latest decided rounds and who was elected")
    es.add_argument(
        "--config",
        type=Path,
        default=default_config(),
        help="config file (default: $EDGENCE_CONFIG or %(default)s)",
    )
    es.add_argument("--round", type=int, help="show this round only")
    es.add_argument("--last", type=int, default=5, help="how many rounds (default 5)")
    es.add_argument("--json", action="store_true", help="the published JSON documents")
    es.set_defaults(fn=cmd_election_status)

    s = sub.add_parser(
        "masternode", help="this gateway in the MasternodeRegistry: register, status, ..."
    )
    s.add_argument(
        "action",
        choices=["register", "status", "heartbeat", "withdraw"],
        help="register (locks the collateral), status, heartbeat, withdraw (returns it)",
    )
    config_argument(s)
    s.add_argument(
        "--vrf-public-key", help="33-byte compressed VRF public key in hex (register only)"
    )
    s.set_defaults(fn=cmd_masternode)

    s = sub.add_parser("verify", help="check a signed observation envelope (FILE or -)")
    s.add_argument("file")
    s.set_defaults(fn=cmd_verify)

    from agent.devices.pairing import add_parsers as add_pairing_parsers

    add_pairing_parsers(sub, config_argument)
    from agent.devices.deploy import add_parsers as add_firmware_parsers

    add_firmware_parsers(sub)
    return p


def config_argument(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--config",
        type=Path,
        default=default_config(),
        help="config file (default: $EDGENCE_CONFIG or %(default)s)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except AgentError as exc:
        print(f"edgence-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
