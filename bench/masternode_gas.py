"""Gas per epoch of the masternode layer on a real anvil: reward check-ins and claims
(RewardPool), proof-of-service verdicts (ServiceStanding, its committee the one posted on the
ElectionBoard) and a dApp vote (DappRegistry), at 7 masternodes and at 21, the per-node cost
from the difference, and the projection to 1,000. The committee's post is the election's cost
(bench/election_cost.py), shown here once per epoch and left out of the total.

Baseline in the same run: a registry heartbeat (the per-node liveness transaction that exists
already), so the ratio says what a check-in costs next to it.

Run: python -m bench.record masternode-gas -- python bench/masternode_gas.py [--committee 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.build import build
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import Eip1559Tx, contract_address, encode_call, encode_constructor

COLLATERAL = 10**18
EPOCH_BLOCKS = 100  # more blocks than one epoch's measured transactions at 21 nodes
REWARD = 10**18
PROJECT_TO = 1000


class Chain:
    def __init__(self, node: LocalAnvil) -> None:
        self.node = node
        self.dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
        self.nonces: dict[str, int] = {}

    def send(self, key: GatewayKey, to: str | None, data: bytes, value: int = 0) -> int:
        """Mined at once (automine); returns gas used, raises if it reverted."""
        n = self.nonces.get(key.address, 0)
        self.nonces[key.address] = n + 1
        tx = Eip1559Tx(self.node.chain_id, n, 10**9, 50 * 10**9, 30_000_000, to, value, data)
        signed = tx.sign(key)
        self.node.rpc("eth_sendRawTransaction", [signed.raw_hex])
        while (rc := self.node.rpc("eth_getTransactionReceipt", [signed.hash_hex])) is None:
            time.sleep(0.002)
        assert isinstance(rc, dict)
        if rc["status"] != "0x1":
            raise RuntimeError(f"reverted: {to} {data[:4].hex()}")
        return int(rc["gasUsed"], 16)

    def deploy(self, name: str, *args: Any) -> str:
        art = load_artifact(name)
        n = self.nonces.get(self.dev.address, 0)
        self.send(self.dev, None, art.bytecode + encode_constructor(art.abi, *args))
        return contract_address(self.dev.address, n)

    def tx(
        self, key: GatewayKey, to: str, contract: str, fn: str, *args: Any, value: int = 0
    ) -> int:
        return self.send(key, to, encode_call(load_artifact(contract).function(fn), *args), value)

    def mine_to_next_epoch(self, first: int) -> None:
        head = int(str(self.node.rpc("eth_blockNumber")), 16)
        nxt = first + ((head - first) // EPOCH_BLOCKS + 1) * EPOCH_BLOCKS
        self.node.rpc("anvil_mine", [hex(nxt - head)])


def measure(work: Path, n: int, committee_size: int) -> dict[str, float]:
    with LocalAnvil(work / f"anvil-{n}", extra=("--gas-limit", "100000000")) as node:
        c = Chain(node)
        committee = [GatewayKey.generate() for _ in range(committee_size)]
        nodes = [GatewayKey.generate() for _ in range(n)]
        for k in committee + nodes:
            node.rpc("anvil_setBalance", [k.address, hex(100 * 10**18)])
        registry = c.deploy("MasternodeRegistry", COLLATERAL, 10**9)
        node.rpc("anvil_mine", [hex(EPOCH_BLOCKS + 2)])
        # The board's epoch 0 begins at the next block; the pool's epochs are the board's.
        start = int(str(node.rpc("eth_blockNumber")), 16) - EPOCH_BLOCKS
        board = c.deploy("ElectionBoard", 1, registry, start, EPOCH_BLOCKS, 2, 1, 1)
        first = start + EPOCH_BLOCKS + 1
        standing = c.deploy("ServiceStanding", board, 2)
        c.tx(c.dev, registry, "MasternodeRegistry", "attachServiceStanding", standing)
        pool = c.deploy("RewardPool", registry, REWARD, EPOCH_BLOCKS, first)
        dapps = c.deploy("DappRegistry", registry)
        c.send(c.dev, pool, b"", value=100 * REWARD)
        for k in nodes:
            vrf = bytes([2]) + k.public_key_uncompressed[1:33]
            c.tx(k, registry, "MasternodeRegistry", "register", vrf, value=COLLATERAL)
        heartbeat = [c.tx(k, registry, "MasternodeRegistry", "heartbeat") for k in nodes]
        addrs = [k.address for k in nodes]

        members = [k.address for k in committee]
        posts: list[int] = []

        def epoch_of_service(epoch_index: int) -> tuple[list[int], list[int]]:
            # The election's post (any active masternode; its cost is the election's too).
            posts.append(
                c.tx(nodes[0], board, "ElectionBoard", "postCommittee", epoch_index, members)
            )
            checkins = [c.tx(k, pool, "RewardPool", "checkIn") for k in nodes]
            verdicts = [
                c.tx(
                    m, standing, "ServiceStanding", "submitVerdicts", epoch_index, addrs, [True] * n
                )
                for m in committee
            ]
            c.mine_to_next_epoch(first)
            return checkins, verdicts

        c.mine_to_next_epoch(first)
        epoch_of_service(1)  # first check-ins (each node's claim cursor starts)
        checkins, verdicts = epoch_of_service(2)  # steady state
        claim1 = [c.tx(k, pool, "RewardPool", "claim", 3) for k in nodes]  # epochs 1..2
        for e in range(3, 13):
            epoch_of_service(e)
        claim10 = [c.tx(k, pool, "RewardPool", "claim", 13) for k in nodes]  # epochs 3..12
        c.tx(c.dev, dapps, "DappRegistry", "propose", "bench", ["0x" + "ab" * 20])
        votes = [c.tx(k, dapps, "DappRegistry", "vote", 0, True) for k in nodes[: n // 2 + 1]]
        return {
            "heartbeat": sum(heartbeat) / n,
            "checkin_epoch": sum(checkins),
            "checkin_each": sum(checkins) / n,
            "verdicts_epoch": sum(verdicts),
            "verdict_tx": sum(verdicts) / committee_size,
            "claim_2_epochs_each": sum(claim1) / n,
            "claim_10_epochs_each": sum(claim10) / n,
            "vote": sum(votes) / len(votes),
            "post": sum(posts[1:]) / len(posts[1:]),
        }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--committee", type=int, default=5)
    ap.add_argument("--small", type=int, default=7)
    ap.add_argument("--large", type=int, default=21)
    a = ap.parse_args(argv)
    build()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        small = measure(Path(tmp), a.small, a.committee)
        large = measure(Path(tmp), a.large, a.committee)
    s, L, n1, n2 = small, large, a.small, a.large
    claim_per_epoch = (s["claim_10_epochs_each"] - s["claim_2_epochs_each"]) / 8
    claim_base = s["claim_2_epochs_each"] - 2 * claim_per_epoch
    # Per-node slopes from the two fleet sizes; the intercept is what one transaction costs
    # regardless of the fleet.
    checkin_node = (L["checkin_epoch"] - s["checkin_epoch"]) / (n2 - n1)
    checkin_fixed = s["checkin_epoch"] - checkin_node * n1
    verdict_node = (L["verdicts_epoch"] - s["verdicts_epoch"]) / (n2 - n1)
    verdict_fixed = s["verdicts_epoch"] - verdict_node * n1
    vote_node = (L["vote"] - s["vote"]) / (n2 - n1)
    vote_fixed = s["vote"] - vote_node * n1

    def proj(fixed: float, per_node: float, n: int) -> float:
        return fixed + per_node * n

    claim_epoch_small = n1 * (claim_base / 10 + claim_per_epoch)  # everyone claims every 10 epochs
    rows = [
        ("baseline: registry heartbeat, per node", s["heartbeat"], L["heartbeat"], None, 1.0),
        (
            "rewards: checkIn, per node",
            s["checkin_each"],
            L["checkin_each"],
            None,
            s["checkin_each"] / s["heartbeat"],
        ),
        (
            "rewards: checkIns of one epoch, all nodes",
            s["checkin_epoch"],
            L["checkin_epoch"],
            proj(checkin_fixed, checkin_node, PROJECT_TO),
            None,
        ),
        (
            "rewards: claim covering 2 epochs, per node",
            s["claim_2_epochs_each"],
            L["claim_2_epochs_each"],
            None,
            None,
        ),
        (
            "rewards: claim covering 10 epochs, per node",
            s["claim_10_epochs_each"],
            L["claim_10_epochs_each"],
            None,
            None,
        ),
        (
            "rewards: claims per epoch, all nodes claiming every 10 epochs",
            claim_epoch_small,
            n2 * (claim_base / 10 + claim_per_epoch),
            PROJECT_TO * (claim_base / 10 + claim_per_epoch),
            None,
        ),
        (
            "proof of service: submitVerdicts, one member, all nodes",
            s["verdict_tx"],
            L["verdict_tx"],
            proj(verdict_fixed, verdict_node, PROJECT_TO) / a.committee,
            None,
        ),
        (
            f"proof of service: verdicts of one epoch, committee of {a.committee}",
            s["verdicts_epoch"],
            L["verdicts_epoch"],
            proj(verdict_fixed, verdict_node, PROJECT_TO),
            None,
        ),
        (
            f"election: postCommittee of {a.committee}, once per epoch (not in the total)",
            s["post"],
            L["post"],
            s["post"],
            None,
        ),
        (
            "dApp vote (walks the registry: activeCount)",
            s["vote"],
            L["vote"],
            proj(vote_fixed, vote_node, PROJECT_TO),
            None,
        ),
    ]
    total_small = s["checkin_epoch"] + claim_epoch_small + s["verdicts_epoch"]
    total_large = (
        L["checkin_epoch"] + n2 * (claim_base / 10 + claim_per_epoch) + L["verdicts_epoch"]
    )
    total_proj = (
        proj(checkin_fixed, checkin_node, PROJECT_TO)
        + PROJECT_TO * (claim_base / 10 + claim_per_epoch)
        + proj(verdict_fixed, verdict_node, PROJECT_TO)
    )
    rows.append(
        ("total per epoch: rewards + proof of service", total_small, total_large, total_proj, None)
    )
    print(
        f"masternode layer gas on anvil (cancun), committee of {a.committee}; "
        f"{n1} and {n2} masternodes measured, {PROJECT_TO:,} projected"
    )
    print(f"{'what':<64} {n1:>10} {n2:>10} {PROJECT_TO:>12}  ratio to heartbeat")
    print("-" * 112)
    for name, v1, v2, v3, ratio in rows:
        print(
            f"{name:<64} {v1:>10,.0f} {v2:>10,.0f} "
            f"{'' if v3 is None else f'{v3:,.0f}':>12}  {'' if ratio is None else f'{ratio:.2f}'}"
        )
    print(
        f"per node: checkIn {checkin_node:,.0f}; verdicts {verdict_node / a.committee:,.0f} per "
        f"member per node; claim {claim_per_epoch:,.0f} per epoch walked + {claim_base:,.0f} per "
        f"claim; vote {vote_node:,.0f} per registered node"
    )
    print(
        f"projection = fixed + per-node x {PROJECT_TO:,} (per-node cost from the {n1}- and "
        f"{n2}-node runs); a {PROJECT_TO:,}-node submitVerdicts would be split into several "
        f"transactions under a block gas limit; took {time.monotonic() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
