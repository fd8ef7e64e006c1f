"""What taking part in the election costs one agent: gas per round per node (measured on a real
anvil with 7 and with 1,000 masternodes registered and submitting in the same round: the
registry, the board, real proofs and signatures) and CPU per round
(epoch) per agent: its own proof or signature, deciding the round (the registry standings and
the tally), and the epoch's aggregation (verifying every gateway's observation of every feed
from the upstream broker, encoding the batch), at 7 masternodes and, by simulation of the same
selection and aggregation logic, at 1,000.

Baseline measured in the same run: one ECVRF verification, the unit the vrf decision is made
of (the decision's CPU is shown as a multiple of it).

Run: python -m bench.record election-cost -- python -m bench.election_cost   (a few minutes)
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner, verify_envelope
from agent.attest.selection import sign_selection
from agent.chainclient.anvil import LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import encode_call
from agent.election.standing import RegistryEvent, standings
from agent.election.tally import (
    BoardSubmission,
    RoundContext,
    chain_id_bytes,
    tally_paper,
    tally_vrf,
)
from agent.election.vrf_mode import vrf_alpha
from agent.model import AuthMethod, Eip712Domain, Reading, Transport
from agent.oracle import submit_batch_calldata
from bench.chain import COLLATERAL, Chain, gas

LENGTH, WINDOW = 20, 10
SEATS = 21
CHAIN_ID = 31337


def vrf_secret(key: GatewayKey) -> bytes:
    return hashlib.sha256(b"cost bench vrf " + bytes.fromhex(key.address[2:])).digest()


def gas_rows(workdir: Path, n: int) -> dict[str, list[int]]:
    """Gas of each transaction a masternode sends, with n masternodes registered and every one
    of them submitting in the same round (all in one block: the gas limit is raised)."""
    reg = load_artifact("MasternodeRegistry")
    board_art = load_artifact("ElectionBoard")
    out: dict[str, list[int]] = {}
    extra = ("--gas-limit", "2000000000")
    with LocalAnvil(workdir / f"anvil-{n}", extra=extra) as node:
        chain = Chain(node, gas_limit=1_500_000)
        registry = chain.deploy("MasternodeRegistry", COLLATERAL, 1_000)
        secrets = [hashlib.sha256(b"cost bench key %d" % i).digest() for i in range(n)]
        keys = [GatewayKey.from_bytes(sec) for sec in secrets]
        vrf_keys = [ecvrf.public_key_of(vrf_secret(key)) for key in keys]
        out["registry register (once)"] = chain.register_masternodes(registry, keys, vrf_keys)
        start = chain.head() + 2 * LENGTH + 2
        boards = {
            mode: chain.deploy("ElectionBoard", code, registry, start, LENGTH, WINDOW, 3, 15)
            for mode, code in (("paper", 0), ("vrf", 1))
        }
        chain.automine(False)
        beat = encode_call(reg.function("heartbeat"))
        out["registry heartbeat"] = chain.mine_all(
            [chain.broadcast(k, registry, beat) for k in keys]
        )
        chain.mine_to(start + 1)
        chain32 = chain_id_bytes(node.chain_id)
        definite = chain.block_hash(start)
        seed = hashlib.sha256(b"cost bench seed").digest()
        paper = [
            chain.broadcast(
                key,
                boards["paper"],
                encode_call(
                    board_art.function("submitSelection"),
                    0,
                    definite,
                    sign_selection(secrets[i], chain32, 0, definite),
                ),
            )
            for i, key in enumerate(keys)
        ]
        paper_gas = chain.mine_all(paper)
        out["paper submitSelection (first of the round)"] = paper_gas[:1]
        out["paper submitSelection"] = paper_gas[1:]
        chain.mine_to(start + LENGTH + 1)  # round 1's window
        proofs = []
        for key in keys:
            node_id = bytes.fromhex(key.address[2:])
            proof = ecvrf.prove(vrf_secret(key), vrf_alpha(chain32, 1, seed, node_id))
            data = encode_call(board_art.function("submitProof"), 1, proof)
            proofs.append(chain.broadcast(key, boards["vrf"], data))
        out["vrf submitProof"] = chain.mine_all(proofs)
        chain.mine_to(start + LENGTH + WINDOW + 1)  # round 1 decided: post its committee
        chain.automine(True)
        for r, k in ((1, 3), (0, min(SEATS, n))):
            committee = [key.address for key in keys[:k]]
            data = encode_call(board_art.function("postCommittee"), r, committee)
            out.setdefault(f"postCommittee, k={k} (one per epoch)", []).append(
                gas(chain.send(keys[0], boards["vrf"], data))
            )
    return out


def cpu(fn: Callable[[], object], repeat: int = 3) -> float:
    """Median process CPU seconds of fn() (this process: all of it is this thread's work)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def simulated_round(n: int) -> dict[str, float]:
    """One round at n masternodes, as one agent does it: its own proof / signature, the
    standings from n nodes' registry events, the tally of n submissions."""
    chain32 = chain_id_bytes(CHAIN_ID)
    secrets = [hashlib.sha256(b"cost node %d" % i).digest() for i in range(n)]
    nodes = [bytes.fromhex(GatewayKey.from_bytes(s).address[2:]) for s in secrets]
    seed = hashlib.sha256(b"cost seed").digest()
    definite = hashlib.sha256(b"cost definite").digest()
    boundary, cutoff = 1000, 1000 + WINDOW
    ctx = RoundContext(0, CHAIN_ID, "0x" + "ab" * 20, boundary, cutoff, "0x" + "cd" * 32, SEATS)
    vrf_subs = [
        BoardSubmission(
            nd, bytes(32), ecvrf.prove(s, vrf_alpha(chain32, 0, seed, nd)), boundary + 1
        )
        for s, nd in zip(secrets, nodes, strict=True)
    ]
    paper_subs = [
        BoardSubmission(nd, definite, sign_selection(s, chain32, 0, definite), boundary + 1)
        for s, nd in zip(secrets, nodes, strict=True)
    ]
    events = [
        RegistryEvent(nd, "registered", 10, 0, ecvrf.public_key_of(s))
        for s, nd in zip(secrets, nodes, strict=True)
    ] + [RegistryEvent(nd, "heartbeat", cutoff - 5, 0) for nd in nodes]

    def stand() -> dict[bytes, Any]:
        return standings(
            events, nodes, cutoff=cutoff, key_height=boundary - 2 * LENGTH, heartbeat_window=1000
        )

    st = stand()
    alpha0 = vrf_alpha(chain32, 0, seed, nodes[0])
    return {
        "own ECVRF proof": cpu(lambda: ecvrf.prove(secrets[0], alpha0)),
        "own paper signature": cpu(lambda: sign_selection(secrets[0], chain32, 0, definite)),
        "registry standings": cpu(stand),
        "vrf tally (verify all proofs, top k)": cpu(
            lambda: tally_vrf(ctx, seed, vrf_subs, st), 1 if n > 100 else 3
        ),
        "paper tally (verify all signatures, hash merge)": cpu(
            lambda: tally_paper(ctx, definite, paper_subs, st), 1 if n > 100 else 3
        ),
    }


FEEDS = 10


def aggregation_cpu(gateways: int) -> float:
    """CPU of one epoch's aggregation as every agent does it: verify each gateway's newest
    observation of each of FEEDS feeds as it arrives from the upstream broker (the leader
    then encodes one batch: measured too)."""
    domain = Eip712Domain("Edgence", "2", CHAIN_ID, "0x" + "ab" * 20)
    signer = ObservationSigner(GatewayKey.from_bytes(hashlib.sha256(b"agg").digest()), domain)
    envelopes = [
        signer.sign(
            Reading(
                f"dev-{f}",
                "temp",
                2100 + f,
                -2,
                "Cel",
                1_700_000_000,
                1,
                Transport.MQTT,
                AuthMethod.HMAC,
            ),
            f + 1,
        ).envelope
        for f in range(FEEDS)
    ]

    def epoch() -> None:
        items = [verify_envelope(envelopes[i % FEEDS]) for i in range(gateways * FEEDS)]
        submit_batch_calldata(items[:50])

    return cpu(epoch, 1 if gateways > 100 else 3)


def main(argv: list[str]) -> None:
    sizes = (7, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        by_n = {n: gas_rows(Path(tmp), n) for n in sizes}
    print("Gas per node, measured on anvil with n masternodes registered, all submitting in the")
    print("same round (one registry, a paper and a vrf board); median (min..max) over the nodes")
    print(f"{'transaction':<45} {'n=7':>26} {'n=1,000':>26}")
    labels = list(dict.fromkeys(label for rows in by_n.values() for label in rows))
    for label in labels:
        cells = []
        for n in sizes:
            values = by_n[n].get(label)
            cells.append(
                f"{int(statistics.median(values)):,} ({min(values):,}..{max(values):,})"
                if values
                else "-"
            )
        print(f"{label:<45} {cells[0]:>26} {cells[1]:>26}")
    for n in sizes:
        vrf_gas = int(statistics.median(by_n[n]["vrf submitProof"]))
        beat = int(statistics.median(by_n[n]["registry heartbeat"]))
        print(
            f"per round per node (vrf), n={n:,}: {vrf_gas:,} gas for the proof, plus "
            f"{beat * LENGTH // 500:,} a round for heartbeats every half of a 1,000-block "
            f"window with {LENGTH}-block rounds"
        )
    print()
    secret = hashlib.sha256(b"cost baseline").digest()
    alpha = b"baseline alpha"
    proof = ecvrf.prove(secret, alpha)
    pub = ecvrf.public_key_of(secret)
    unit = cpu(lambda: [ecvrf.verify(pub, proof, alpha) for _ in range(20)]) / 20
    print(f"Baseline: one ECVRF verification {unit * 1e3:.2f} ms CPU")
    print("CPU per round (epoch) per agent, ms (and in ECVRF verifications)")
    print(f"{'part':<48} {'n=7':>16} {'n=1,000':>18}")
    small, big = simulated_round(7), simulated_round(1000)
    for part in small:
        print(
            f"{part:<48} {small[part] * 1e3:>9.1f} ({small[part] / unit:>4.0f}) "
            f"{big[part] * 1e3:>10.1f} ({big[part] / unit:>5.0f})"
        )
    agg7, agg1k = aggregation_cpu(7), aggregation_cpu(1000)
    label = f"aggregation: verify {FEEDS} feeds x n gateways, a batch"
    print(
        f"{label:<48} {agg7 * 1e3:>9.1f} ({agg7 / unit:>4.0f}) "
        f"{agg1k * 1e3:>10.1f} ({agg1k / unit:>5.0f})"
    )
    vrf_parts = ("own ECVRF proof", "registry standings", "vrf tally (verify all proofs, top k)")
    total7 = agg7 + sum(small[p] for p in vrf_parts)
    total1k = agg1k + sum(big[p] for p in vrf_parts)
    print(
        f"{'vrf mode and aggregation, all of it':<48} "
        f"{total7 * 1e3:>9.1f} ({total7 / unit:>4.0f}) "
        f"{total1k * 1e3:>10.1f} ({total1k / unit:>5.0f})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
