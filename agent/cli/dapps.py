"""`edgence-agent dapps`: the DappRegistry's proposals and approvals, and this masternode's
vote (approve or revoke) on one of them."""

from __future__ import annotations

import argparse
from typing import Any

from agent.cli.options import load
from agent.cli.run import run_event_loop
from agent.errors import AgentError


async def _dapps(args: argparse.Namespace) -> int:
    from agent.chainclient.approvals import DappRegistryView
    from agent.chainclient.contractclient import ContractClient
    from agent.chainclient.contracts import load_artifact
    from agent.chainclient.rpc import RpcClient
    from agent.wiring import load_gateway_key, tx_sender

    cfg = load(args)
    address = cfg.masternode.dapps
    if address is None:
        raise AgentError(
            f"{cfg.path}: [masternode] dapps is not set",
            fix="put the DappRegistry's address in [masternode] dapps",
        )
    key = load_gateway_key(cfg)
    c = cfg.chain
    async with RpcClient(c.rpc_url, timeout=c.timeout_s) as rpc:
        view = DappRegistryView(rpc, address)
        if args.action == "vote":
            if args.id is None or args.stance is None:
                raise AgentError("dapps vote needs a proposal id and approve or revoke")
            sender = tx_sender(cfg, rpc, key)
            try:
                await sender.check_chain()
                await sender.check_unfinished()
                client = ContractClient(rpc, sender, address, load_artifact("DappRegistry"))
                rc = await client.transact("vote", args.id, args.stance == "approve")
                print(
                    f"vote {args.stance} on dApp {args.id}: transaction "
                    f"{rc['transactionHash']} mined in block {int(rc['blockNumber'], 16)}"
                )
            finally:
                await sender.close()
        proposals = await view.proposals()
        print(f"dapp registry {address} ({len(proposals)} proposal(s))")
        for p in proposals:
            if args.id is not None and p.id != args.id:
                continue
            (stance,) = await view.call("stanceOf", p.id, key.address)
            mine = ("none", "approve", "revoke")[int(stance)]
            state = "APPROVED" if p.approved else "not approved"
            print(
                f"{p.id:>4}  {state:<12}  {p.name[:40]!r}  approve {p.approvals}  "
                f"revoke {p.revocations}  this node: {mine}  proposer {p.proposer}"
            )
            for a in p.contracts:
                print(f"      contract {a}")
    return 0


def cmd_dapps(args: argparse.Namespace) -> int:
    return run_event_loop(_dapps(args))


def add_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "dapps",
        parents=[config],
        help="dApps proposed to the DappRegistry: list them, vote approve or revoke",
    )
    s.add_argument("action", choices=["list", "vote"], nargs="?", default="list")
    s.add_argument("id", type=int, nargs="?", help="the proposal (list: only this one)")
    s.add_argument(
        "stance", choices=["approve", "revoke"], nargs="?", help="vote: this node's stance"
    )
    s.set_defaults(fn=cmd_dapps)
