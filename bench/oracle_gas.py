"""Gas per accepted feed value on a real anvil: single submits (one observation per
transaction, as a masternode reporting alone does) versus submitBatch of 10 and 50 feeds, at
quorum 1 and 3.

Baseline measured in the same run: the single-submit path at the same quorum, so the ratio
is what batching saves. Every figure is the transaction's gasUsed (21,000 intrinsic included)
divided by the feed values it got accepted. Two rounds per scenario: the first value of fresh
feeds (storage written from zero) and the next value of the same feeds (steady state: slots
rewritten). Each scenario twice: with any active masternode reporting (no aggregators set) and
with the oracle's reporters gated by an ElectionBoard committee (`setAggregators`, in an epoch
whose committee is posted: every report pays the board's `mayReportNow`), the ratio between
them being what the gate costs. Keys, timestamps and values are fixed, so signatures and
calldata, and with them the gas, are the same in every run.

Run: python -m bench.oracle_gas [--write]    (about half a minute)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.attest.eip712 import keccak256
from agent.attest.feeds import default_feed
from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner, VerifiedObservation, verify_envelope
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.build import build
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import (
    encode_call,
    event_topic,
)
from agent.model import AuthMethod, Eip712Domain, Reading, Transport
from agent.oracle import submit_batch_calldata, submit_calldata
from bench.chain import COLLATERAL, Chain
from bench.results import write_section

GENESIS = 1_800_000_000  # anvil's genesis timestamp; observations are stamped from it
TARGET = 120_000  # gas per accepted feed value, quorum 3, batch of 10 (issue 17)
MASTERNODES = 3


def values_accepted(rc: dict[str, Any]) -> int:
    topic = event_topic(load_artifact("ObservationOracle").event("ValueAccepted"))
    return sum(1 for lg in rc["logs"] if lg["topics"][0] == topic)


class Bench:
    """One registry and oracle, three masternodes with fixed keys; with `gated`, the oracle's
    reporters are an ElectionBoard's committee (setAggregators), in an epoch whose committee
    (the three, in key order) is posted: every report pays the board's mayReportNow."""

    def __init__(self, chain: Chain, gated: bool) -> None:
        self.chain = chain
        self.oracle_art = load_artifact("ObservationOracle")
        self.registry = chain.deploy("MasternodeRegistry", COLLATERAL, 1_000_000)
        self.oracle = chain.deploy("ObservationOracle", self.registry, 600)
        domain = Eip712Domain("Edgence", "2", chain.node.chain_id, self.oracle)
        self.keys = [
            GatewayKey.from_bytes(keccak256(f"bench-masternode-{i}".encode()))
            for i in range(MASTERNODES)
        ]
        vrf_keys = [b"\x02" + key.public_key_uncompressed[1:33] for key in self.keys]
        chain.register_masternodes(self.registry, self.keys, vrf_keys)
        if gated:
            self.gate()
        self.signers = [ObservationSigner(k, domain) for k in self.keys]
        self.seq = [0] * MASTERNODES

    def gate(self) -> None:
        """An ElectionBoard (rank i may report from offset i of a 400-block epoch) as the
        oracle's aggregators, its round 0 committee posted, the chain moved into epoch 0."""
        board_art = load_artifact("ElectionBoard")
        start = self.chain.head() + 2
        length = 400  # blocks (and anvil seconds): the scenarios (about 230 blocks) fit in epoch 0
        board = self.chain.deploy("ElectionBoard", 1, self.registry, start, length, 1, 1, length)
        self.chain.mine_to(start + 2)  # round 0's cutoff passed
        committee = [k.address for k in self.keys]
        post = encode_call(board_art.function("postCommittee"), 0, committee)
        self.chain.send(self.keys[0], board, post)
        gate = encode_call(self.oracle_art.function("setAggregators"), board)
        self.chain.send(self.chain.dev, self.oracle, gate)
        for _ in range(0, length + MASTERNODES, 50):  # into epoch 0, 50 blocks a call
            self.chain.node.rpc("anvil_mine", [hex(50)])

    def create_feeds(self, prefix: str, n: int, quorum: int) -> list[str]:
        devices = [f"{prefix}-{k}" for k in range(n)]
        fn = self.oracle_art.function("createFeed")
        for d in devices:
            feed = default_feed(d, "temp")
            data = encode_call(fn, feed, quorum, 2, True, 3600, 3600, [])
            self.chain.send(self.chain.dev, self.oracle, data)
        return devices

    def observe(self, i: int, device: str, counter: int) -> VerifiedObservation:
        """Masternode i's observation of `device`'s reading number `counter` (the same reading,
        so the same value, for every masternode: a witnessed BTHome advert, say)."""
        self.seq[i] += 1
        r = Reading(
            device,
            "temp",
            2000 + counter,
            -2,
            "Cel",
            GENESIS + counter,
            counter,
            Transport.BLE,
            AuthMethod.BTHOME,
        )
        return verify_envelope(self.signers[i].sign(r, self.seq[i]).envelope)

    def single_round(self, devices: list[str], quorum: int, counter: int) -> tuple[int, int]:
        """(gas, values accepted) of one value per feed, each report its own transaction."""
        gas = values = 0
        for d in devices:
            for i in range(quorum):
                rc = self.chain.send(
                    self.keys[i], self.oracle, submit_calldata(self.observe(i, d, counter))
                )
                gas += int(rc["gasUsed"], 16)
                values += values_accepted(rc)
        return gas, values

    def batch_round(self, devices: list[str], quorum: int, counter: int) -> tuple[int, int]:
        """(gas, values accepted) of one value per feed, all in one submitBatch."""
        items = [self.observe(i, d, counter) for d in devices for i in range(quorum)]
        rc = self.chain.send(self.keys[0], self.oracle, submit_batch_calldata(items))
        return int(rc["gasUsed"], 16), values_accepted(rc)


Row = tuple[str, str, int, int, int, int, int]  # gate, path, quorum, feeds, obs/tx, first, steady


def measure(workdir: Path, gated: bool) -> list[Row]:
    rows: list[Row] = []
    extra = ("--gas-limit", "300000000", "--timestamp", str(GENESIS))
    gate = "committee" if gated else "none"
    with LocalAnvil(workdir / f"anvil-{gate}", extra=extra) as node:
        b = Bench(Chain(node, gas_limit=30_000_000), gated)
        for quorum in (1, 3):
            for path, n in (("single submits", 10), ("submitBatch", 10), ("submitBatch", 50)):
                devices = b.create_feeds(f"q{quorum}-{path[:6]}-{n}", n, quorum)
                per_value = []
                for counter in (1, 2):
                    run = b.single_round if path == "single submits" else b.batch_round
                    gas, values = run(devices, quorum, counter)
                    if values != n:
                        raise RuntimeError(f"{path} q{quorum} n{n}: {values} of {n} accepted")
                    per_value.append(gas // values)
                per_tx = 1 if path == "single submits" else n * quorum
                rows.append((gate, path, quorum, n, per_tx, per_value[0], per_value[1]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.oracle_gas")
    ap.add_argument("--write", action="store_true", help="record the results in RESULTS.md")
    args = ap.parse_args()
    build()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(Path(tmp), gated=False) + measure(Path(tmp), gated=True)
    took = time.monotonic() - t0
    baseline = {
        (g, q): steady for g, path, q, _n, _t, _f, steady in rows if path == "single submits"
    }
    ungated = {(p, q, n): steady for g, p, q, n, _t, _f, steady in rows if g == "none"}
    lines = [
        "| reporters | path | quorum | feeds | observations per tx | gas per value, first | "
        "gas per value, steady | ratio to single submits (steady) | ratio to no gate (steady) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g, path, q, n, per_tx, first, steady in rows:
        lines.append(
            f"| {g} | {path} | {q} | {n} | {per_tx} | {first:,} | {steady:,} | "
            f"{steady / baseline[(g, q)]:.2f} | {steady / ungated[(path, q, n)]:.3f} |"
        )
    target = next(
        s
        for g, p, q, n, _t, _f, s in rows
        if g == "committee" and p == "submitBatch" and q == 3 and n == 10
    )
    verdict = "met" if target <= TARGET else "missed"
    body = "\n".join(lines) + (
        f"\n\nTarget (issue 17): <= {TARGET:,} gas per accepted feed value at quorum 3 in a "
        f"batch of 10 feeds, steady state, reporters gated by the committee: {target:,}, "
        f"**{verdict}**.\n\n"
        "*reporters*: none = any active masternode (no aggregators set); committee = the "
        "oracle's `setAggregators(board)` on, every report checked with the ElectionBoard's "
        "`mayReportNow` in an epoch whose committee is posted (the three masternodes).\n\n"
        "Gas per accepted feed value = gasUsed of the transactions (21,000 intrinsic included) "
        "/ feed values accepted. Anvil (`--gas-limit 300000000`), three registered "
        "masternodes, feeds created with quorum q, minimum assurance 2, same-reading policy; "
        "every masternode signs the same BTHome reading (assurance 2). Single submits: each "
        "masternode sends its own `submit`, the q-th completes the round in storage. "
        "submitBatch: one transaction with q signatures per feed, decided in memory (one "
        "policy check per feed). *first* = the first value of fresh feeds (zero slots "
        "written), *steady* = the next value of the same feeds. Fixed keys and timestamps: "
        f"the figures are exact and repeat. Took {took:.0f} s."
    )
    print(body)
    if args.write:
        write_section("oracle_gas", "python -m bench.oracle_gas --write", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
