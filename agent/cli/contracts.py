"""`edgence-agent contracts deploy | feed create | feed show | latest` and `edgence-agent keys`:
thin argument handling; the work is in agent.chainclient.deploy and agent.attest.vrfkey."""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.options import load
from agent.cli.run import run_event_loop

if TYPE_CHECKING:
    from agent.attest.keys import GatewayKey
    from agent.chainclient.rpc import RpcClient
    from agent.chainclient.sender import TxSender

ADDRESS_HELP = "0x and 40 hex digits"


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return run_event_loop(coro)


def _load_key(path: Path) -> GatewayKey:
    from agent.attest.keys import load_key_file

    return load_key_file(path, os.environ.get("EDGENCE_KEY_PASSPHRASE"))


async def _with_sender(
    rpc_url: str,
    key_path: Path,
    call_timeout: float,
    work: Callable[[RpcClient, TxSender], Awaitable[int]],
) -> int:
    """Run `work(rpc, sender)` with a TxSender for the key (its nonce store is throwaway: a
    one-shot command takes nonces from the node)."""
    from agent.chainclient.rpc import RpcClient, hex_int
    from agent.chainclient.sender import TxSender

    key = _load_key(key_path)
    async with RpcClient(rpc_url, timeout=call_timeout) as rpc:
        chain_id = hex_int(await rpc.call("eth_chainId"))
        with tempfile.TemporaryDirectory(prefix="edgence-tx-") as tmp:
            sender = TxSender(rpc, key, chain_id, Path(tmp) / "chain.sqlite", confirmations=1)
            try:
                return await work(rpc, sender)
            finally:
                await sender.close()


def cmd_contracts_deploy(args: argparse.Namespace) -> int:
    from agent.chainclient.deploy import DeployDefaults, deploy_contracts

    d = DeployDefaults(
        collateral_wei=args.collateral,
        heartbeat_window_blocks=args.heartbeat_window,
        max_future_s=args.max_future,
        election_mode=args.election_mode,
        round_length_blocks=args.round_length,
        cutoff_blocks=args.cutoff,
    )

    async def work(rpc: RpcClient, sender: TxSender) -> int:
        out = await deploy_contracts(sender, d)
        mode = f"{d.election_mode} mode"
        print(f"# deployed on chain {out.chain_id} by {out.deployer} after block {out.block}")
        print(f"CHAIN_ID={out.chain_id}")
        print(
            f"REGISTRY={out.registry}  # MasternodeRegistry: collateral {d.collateral_wei} wei, "
            f"inactive after {d.heartbeat_window_blocks} blocks without a heartbeat"
        )
        print(
            f"ORACLE={out.oracle}  # ObservationOracle: Observation type v2, observations "
            f"at most {d.max_future_s} s ahead of a block; create feeds with "
            "`edgence-agent contracts feed create`"
        )
        print(
            f"BOARD={out.board}  # ElectionBoard: {mode}, rounds of "
            f"{d.round_length_blocks} blocks, submissions in the first {d.cutoff_blocks}"
        )
        print("\n# Paste into each masternode's agent.toml:")
        print("\n".join(out.toml_lines(args.rpc)))
        return 0

    return _run(_with_sender(args.rpc, args.key, args.timeout, work))


def _policy(args: argparse.Namespace) -> Any:
    from agent.chainclient.deploy import FeedPolicy

    return FeedPolicy(
        quorum=args.quorum,
        min_assurance=args.min_assurance,
        same_reading=args.same_reading,
        window_s=args.window,
        max_age_s=args.max_age,
        allowed_gateways=tuple(a.lower() for a in args.allow),
    )


def cmd_feed_create(args: argparse.Namespace) -> int:
    from agent.chainclient.deploy import OracleAdmin, resolve_feed

    feed = resolve_feed(args.feed, args.device, args.sensor)
    policy = _policy(args)

    async def work(rpc: RpcClient, sender: TxSender) -> int:
        rc = await OracleAdmin(rpc, args.oracle, sender).create_feed(feed, policy)
        print(f"feed 0x{feed.hex()} created in block {int(rc['blockNumber'], 16)}")
        print(f"policy  {policy.describe()}")
        return 0

    return _run(_with_sender(args.rpc, args.key, args.timeout, work))


def cmd_feed_show(args: argparse.Namespace) -> int:
    from agent.chainclient.deploy import OracleAdmin, resolve_feed
    from agent.chainclient.rpc import RpcClient

    feed = resolve_feed(args.feed, args.device, args.sensor)

    async def work() -> int:
        async with RpcClient(args.rpc, timeout=args.timeout) as rpc:
            policy, creator = await OracleAdmin(rpc, args.oracle).policy(feed)
        print(f"feed     0x{feed.hex()}")
        print(f"creator  {creator}")
        print(f"policy   {policy.describe()}")
        return 0

    return _run(work())


def cmd_latest(args: argparse.Namespace) -> int:
    """The feed's accepted value; with --wait, polls until there is one."""
    from agent.chainclient.deploy import OracleAdmin, resolve_feed
    from agent.chainclient.rpc import RpcClient
    from agent.errors import ChainError

    feed = resolve_feed(args.feed, args.device, args.sensor)

    async def work() -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.wait
        async with RpcClient(args.rpc, timeout=args.timeout) as rpc:
            admin = OracleAdmin(rpc, args.oracle)
            while True:
                try:
                    value = await admin.latest(feed)
                    break
                except ChainError as exc:
                    if "NoValue" not in str(exc) or loop.time() >= deadline:
                        raise
                await asyncio.sleep(0.5)
        print(f"feed         0x{feed.hex()}")
        print("\n".join(value.describe()))
        return 0

    return _run(work())


def cmd_keys(args: argparse.Namespace) -> int:
    from agent.attest.vrfkey import vrf_public_key
    from agent.wiring import load_gateway_key

    key = load_gateway_key(load(args))
    vrf = "0x" + vrf_public_key(key).hex()
    if args.shell:
        print(f"GATEWAY={key.address}")
        print(f"VRF_PUBLIC_KEY={vrf}")
    else:
        print(f"gateway address  {key.checksum_address}")
        print(f"vrf public key   {vrf}  (ECVRF secp256k1; `masternode register` stores it)")
    return 0


def _address(text: str) -> str:
    import re

    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an address ({ADDRESS_HELP})")
    return text.lower()


def _feed_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--rpc", required=True, help="the full node's JSON-RPC URL")
    s.add_argument("--oracle", required=True, type=_address, help="the ObservationOracle")
    s.add_argument("--feed", help="a feed name (its id is keccak256 of the text) or 0x id")
    s.add_argument("--device", help="with --sensor: the default feed keccak256(deviceId‖sensor)")
    s.add_argument("--sensor")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds per node call")


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    """`keys` and `contracts`; `config` is the parent parser holding --config."""
    s = sub.add_parser(
        "keys", parents=[config], help="this gateway's address and election VRF public key"
    )
    s.add_argument(
        "--shell", action="store_true", help="print GATEWAY=.. and VRF_PUBLIC_KEY=.. for eval"
    )
    s.set_defaults(fn=cmd_keys)

    c = sub.add_parser("contracts", help="deploy the contracts, create and read oracle feeds")
    csub = c.add_subparsers(dest="contracts_command", required=True)
    d = csub.add_parser(
        "deploy", help="deploy MasternodeRegistry, ObservationOracle and ElectionBoard"
    )
    d.add_argument("--rpc", required=True, help="the full node's JSON-RPC URL")
    d.add_argument("--key", required=True, type=Path, help="a funded key file (0600)")
    d.add_argument("--collateral", type=int, default=10**18, help="wei (default: %(default)s)")
    d.add_argument("--heartbeat-window", type=int, default=240, help="blocks (default: 240)")
    d.add_argument("--max-future", type=int, default=60, help="seconds (default: 60)")
    d.add_argument("--election-mode", choices=("paper", "vrf"), default="paper")
    d.add_argument("--round-length", type=int, default=20, help="blocks (default: 20)")
    d.add_argument("--cutoff", type=int, default=10, help="blocks (default: 10)")
    d.add_argument("--timeout", type=float, default=30.0, help="seconds per node call")
    d.set_defaults(fn=cmd_contracts_deploy)

    f = csub.add_parser("feed", help="create or show an oracle feed")
    fsub = f.add_subparsers(dest="feed_command", required=True)
    fc = fsub.add_parser("create", help="create a feed with its policy (fixed for good)")
    _feed_args(fc)
    fc.add_argument("--key", required=True, type=Path, help="a funded key file (0600)")
    fc.add_argument("--quorum", type=int, default=3, help="distinct masternodes (default: 3)")
    fc.add_argument(
        "--min-assurance",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="0 unauthenticated, 1 transport-authenticated, 2 device-authenticated (default)",
    )
    fc.add_argument(
        "--same-reading",
        action="store_true",
        help="count only witnesses of one reading (same device and device counter)",
    )
    fc.add_argument("--window", type=int, default=600, help="seconds a round stays open")
    fc.add_argument("--max-age", type=int, default=600, help="seconds an observation may lag")
    fc.add_argument(
        "--allow",
        action="append",
        default=[],
        type=_address,
        help="a gateway allowed to report (repeat; default: any active masternode)",
    )
    fc.set_defaults(fn=cmd_feed_create)
    fs = fsub.add_parser("show", help="a feed's policy and creator")
    _feed_args(fs)
    fs.set_defaults(fn=cmd_feed_show)

    lt = csub.add_parser("latest", help="a feed's accepted value as the contract returns it")
    _feed_args(lt)
    lt.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for a first value (default 0)"
    )
    lt.set_defaults(fn=cmd_latest)
