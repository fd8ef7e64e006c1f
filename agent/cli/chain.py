"""`edgence-agent masternode` and `edgence-agent election status`: this gateway in the
MasternodeRegistry, and the validator-election rounds it decided."""

from __future__ import annotations

import argparse
import json
from typing import Any

from agent.cli.options import load
from agent.cli.run import run_event_loop
from agent.errors import AgentError


def cmd_election_status(args: argparse.Namespace) -> int:
    """The rounds this agent decided, from its election store (the agent may be running)."""
    from agent.election.status import result_docs, status_lines
    from agent.election.store import ElectionStore

    cfg = load(args)
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
    from agent.masternode import RegistryClient
    from agent.wiring import load_gateway_key, tx_sender

    cfg = load(args)
    registry = cfg.masternode.registry
    if registry is None:
        raise AgentError(
            f"{cfg.path}: [masternode] registry is not set",
            fix="put the MasternodeRegistry's address in [masternode] registry",
        )
    key = load_gateway_key(cfg)
    c = cfg.chain
    async with RpcClient(c.rpc_url, timeout=c.timeout_s) as rpc:
        sender = tx_sender(cfg, rpc, key)
        client = RegistryClient(rpc, sender, registry)
        try:
            if args.action != "status" and not (args.action == "rewards" and args.show_only):
                await sender.check_chain()
                await sender.check_unfinished()
            if args.action == "rewards":
                await _rewards(cfg, rpc, sender, show_only=args.show_only)
                return 0
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
                    # The election's own key, derived from the gateway key (`keys` shows it).
                    from agent.attest.vrfkey import vrf_public_key

                    vrf = vrf_public_key(key)
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


async def _rewards(cfg: Any, rpc: Any, sender: Any, *, show_only: bool) -> None:
    """What this masternode can claim from the RewardPool, then the claim (unless show_only)."""
    from agent.rewards import RewardsClient

    if cfg.masternode.rewards is None:
        raise AgentError(
            f"{cfg.path}: [masternode] rewards is not set",
            fix="put the RewardPool's address in [masternode] rewards",
        )
    pool = RewardsClient(rpc, sender, cfg.masternode.rewards)
    st = await pool.status()
    for line in st.describe():
        print(line)
    if show_only or st.to_epoch <= st.from_epoch:
        return
    rc = await pool.claim()
    print(
        f"claimed {st.claimable} wei for epochs {st.from_epoch}..{st.to_epoch - 1}: "
        f"transaction {rc['transactionHash']} mined in block {int(rc['blockNumber'], 16)}"
    )


def cmd_masternode(args: argparse.Namespace) -> int:
    return run_event_loop(_masternode(args))


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    """`election status` and `masternode`; `config` is the parent parser holding --config."""
    s = sub.add_parser("election", help="validator-election rounds")
    esub = s.add_subparsers(dest="election_command", required=True)
    es = esub.add_parser(
        "status", parents=[config], help="the latest decided rounds and who was elected"
    )
    es.add_argument("--round", type=int, help="show this round only")
    es.add_argument("--last", type=int, default=5, help="how many rounds (default 5)")
    es.add_argument("--json", action="store_true", help="the published JSON documents")
    es.set_defaults(fn=cmd_election_status)

    s = sub.add_parser(
        "masternode",
        parents=[config],
        help="this gateway in the MasternodeRegistry: register, status, ...",
    )
    s.add_argument(
        "action",
        choices=["register", "status", "heartbeat", "withdraw", "rewards"],
        help="register (locks the collateral), status, heartbeat, withdraw (returns it), "
        "rewards (shows what the RewardPool owes this masternode and claims it)",
    )
    s.add_argument(
        "--show-only", action="store_true", help="rewards: show what is claimable, do not claim"
    )
    s.add_argument(
        "--vrf-public-key", help="33-byte compressed VRF public key in hex (register only)"
    )
    s.set_defaults(fn=cmd_masternode)
