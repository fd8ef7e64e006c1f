"""Malicious submissions, sent as raw transactions from keys the test holds, are excluded by
every agent alike while the honest agents still decide the round:

paper mode: a double submission (both dropped), a wrong definite hash, a signature over
something else, a high-S copy and a plain copy of an honest node's signature;
vrf mode: a double submission, a proof for another round, a copy of an honest node's proof,
and a node that registered after the round's key height.

Which rule lives where (see docs/election.md): the board enforces the sender, the window and
the disqualifying count; the agents judge hashes, signatures and proofs from the board's logs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.attest.selection import N, sign_selection
from agent.attest.vrfkey import VRF_SECRET_TAG
from agent.chainclient.anvil import LocalAnvil
from agent.election.board import ElectionBoard
from agent.election.definite import keccak256
from agent.election.schedule import RoundSchedule
from agent.election.tally import chain_id_bytes
from agent.election.vrf_mode import vrf_alpha
from agent.localbroker import LocalMosquitto
from tests.integration.conftest import RunningAgent, async_wait_until
from tests.integration.election.conftest import (
    Miner,
    fund,
    head,
    receipt,
    register_raw,
    registry_of,
    registry_tx,
    send_raw,
)
from tests.integration.election.test_rounds import CONFIRMATIONS, rounds_of, start_election

HONEST = 3
CHAIN32 = chain_id_bytes(31337)


def attacker(i: int) -> tuple[GatewayKey, bytes]:
    secret = hashlib.sha256(b"election attacker %d" % i).digest()
    return GatewayKey.from_bytes(secret), secret


def next_quiet_round(node: LocalAnvil, sched: RoundSchedule) -> int:
    """A round whose boundary is still a few blocks away."""
    r = sched.round_at(head(node))
    return (r if r is not None else -1) + 2


def combined_expect(sched: RoundSchedule, target: int, *extra: int) -> Callable[[int], int]:
    """The honest agents' submissions at every submit head; in the target round, extra[i]
    attacker transactions at the i-th head after it (the test sends them once the honest ones
    are mined), so that the miner never closes the window on a slow test."""

    def expect(h: int) -> int:
        r = sched.round_at(h)
        if r is None:
            return 0
        offset = h - (sched.boundary(r) + CONFIRMATIONS - 1)
        if offset == 0:
            return HONEST
        if r == target and 0 < offset <= len(extra):
            return extra[offset - 1]
        return 0

    return expect


async def honest_submissions_mined(
    node: LocalAnvil, board: ElectionBoard, sched: RoundSchedule, r: int
) -> dict[str, bytes]:
    b = sched.boundary(r)
    await async_wait_until(
        lambda: head(node) >= b + CONFIRMATIONS, 120, f"honest submissions of round {r}"
    )
    subs = await board.submissions(r, b + 1, head(node))
    return {"0x" + s.node.hex(): s.payload for s in subs}


def agreed(agents: list[RunningAgent], r: int) -> bytes:
    results = [rounds_of(a).results[r] for a in agents]
    assert all(x.to_json() == results[0].to_json() for x in results)
    return results[0].to_json()


async def test_paper_mode_excludes_double_wrong_hash_bad_signature_and_copies(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    bad = [attacker(i) for i in range(5)]

    def register_attackers(board_addr: str, sched: RoundSchedule) -> None:
        from agent.chainclient.rpc import RpcClient

        board = ElectionBoard(RpcClient(node.url), board_addr)
        for key, secret in bad:
            fund(node, key)
            tx = register_raw(node, board, key, hashlib.sha256(b"vrf" + secret).digest())
            assert receipt(node, tx)["status"] == "0x1"

    agents, keys, _cfg, sched, board_addr = await start_election(
        node, miner, upstream_broker, start_agent, "paper", HONEST, register_attackers
    )
    board = ElectionBoard(rounds_of(agents[0]).rpc, board_addr)
    r = next_quiet_round(node, sched)
    miner.expect = combined_expect(sched, r, 6)

    honest = await honest_submissions_mined(node, board, sched, r)
    victim = keys[0].address
    assert set(honest) == {k.address for k in keys}
    definite = await board.definite_hash_of(r, "latest")
    decider = rounds_of(agents[0]).decider
    assert decider is not None
    assert definite == await decider.definite_hash(r)
    victim_sig = honest[victim]
    high_s = victim_sig[:32] + (N - int.from_bytes(victim_sig[32:], "big")).to_bytes(32, "big")
    (k1, s1), (k2, s2), (k3, s3), (k4, _), (k5, _) = bad
    txs = [
        # 1: two valid signatures (another RFC 6979 nonce) in two transactions
        send_raw(
            node,
            k1,
            board_addr,
            board.selection_data(r, definite, sign_selection(s1, CHAIN32, r, definite)),
        ),
        send_raw(
            node,
            k1,
            board_addr,
            board.selection_data(
                r, definite, sign_selection(s1, CHAIN32, r, definite, nonce_entropy=b"\x01" * 32)
            ),
        ),
        # 2: a valid signature over a definite hash that is not the round's
        send_raw(
            node,
            k2,
            board_addr,
            board.selection_data(
                r, keccak256(definite), sign_selection(s2, CHAIN32, r, keccak256(definite))
            ),
        ),
        # 3: a signature over another round
        send_raw(
            node,
            k3,
            board_addr,
            board.selection_data(r, definite, sign_selection(s3, CHAIN32, r + 1, definite)),
        ),
        # 4: the victim's signature made high-S; 5: the victim's signature as it is
        send_raw(node, k4, board_addr, board.selection_data(r, definite, high_s)),
        send_raw(node, k5, board_addr, board.selection_data(r, definite, victim_sig)),
    ]
    for tx in txs:
        assert (await asyncio.to_thread(receipt, node, tx))[
            "status"
        ] == "0x1"  # the board logs them
    assert head(node) <= sched.cutoff(r)
    await async_wait_until(
        lambda: all(r in rounds_of(a).results for a in agents), 120, f"round {r} decided"
    )
    agreed(agents, r)
    result = rounds_of(agents[0]).results[r]
    assert {n for n, _ in result.scores} == {k.address for k in keys}
    assert set(result.elected) <= {k.address for k in keys}
    assert result.excluded == tuple(
        sorted(
            [
                (k1.address, "double-submission"),
                (k1.address, "double-submission"),
                (k2.address, "wrong-definite-hash"),
                (k3.address, "bad-signature"),
                (k4.address, "bad-signature"),
                (k5.address, "bad-signature"),
            ]
        )
    )
    # The board itself no longer counts the double submitter.
    assert not (await board.call("counted", r, k1.address))[0]
    assert (await board.call("counted", r, k2.address))[0]

    # What the board refuses outright: a submission after the cutoff, and an unregistered sender.
    await async_wait_until(lambda: head(node) > sched.cutoff(r), 60, "past the cutoff")
    late = send_raw(node, k2, board_addr, board.selection_data(r, definite, b"\x00" * 64))
    stranger = GatewayKey.generate()
    fund(node, stranger)
    unregistered = send_raw(
        node, stranger, board_addr, board.selection_data(r + 1, definite, b"\x00" * 64)
    )
    assert (await asyncio.to_thread(receipt, node, late))["status"] == "0x0"
    assert (await asyncio.to_thread(receipt, node, unregistered))["status"] == "0x0"


async def test_vrf_mode_excludes_double_bad_and_copied_proofs_and_late_registration(
    tmp_path: Path,
    upstream_broker: LocalMosquitto,
    contracts_built: Path,
    start_agent: Callable[..., Any],
    chain: tuple[LocalAnvil, Miner],
) -> None:
    node, miner = chain
    bad = [attacker(10 + i) for i in range(5)]
    vrf_secret = {key.address: key.derive_secret(VRF_SECRET_TAG) for key, _ in bad}

    def register_attackers(board_addr: str, sched: RoundSchedule) -> None:
        from agent.chainclient.rpc import RpcClient

        board = ElectionBoard(RpcClient(node.url), board_addr)
        for key, _secret in [*bad[:3], bad[4]]:  # the fourth registers late, below
            fund(node, key)
            tx = register_raw(node, board, key, vrf_secret[key.address])
            assert receipt(node, tx)["status"] == "0x1"

    agents, keys, _cfg, sched, board_addr = await start_election(
        node, miner, upstream_broker, start_agent, "vrf", HONEST, register_attackers
    )
    board = ElectionBoard(rounds_of(agents[0]).rpc, board_addr)
    r = next_quiet_round(node, sched)
    (k1, _), (k2, _), (k3, _), (k4, _), (k5, _) = bad
    fund(node, k4)
    miner.expect = combined_expect(sched, r, 6, 1, 1)

    honest = await honest_submissions_mined(node, board, sched, r)
    # Registered now: long after round r's key height (two rounds before its boundary).
    late_reg = register_raw(node, board, k4, vrf_secret[k4.address])
    decider = rounds_of(agents[0]).decider
    assert decider is not None
    seed = await decider.seed_of(r)  # chained: round r-1 is decided by now
    assert seed is not None

    def alpha(k: GatewayKey, round_: int = r) -> bytes:
        return vrf_alpha(CHAIN32, round_, seed, bytes.fromhex(k.address[2:]))

    own = {k.address: ecvrf.prove(vrf_secret[k.address], alpha(k)) for k in (k1, k4, k5)}
    other_round = ecvrf.prove(vrf_secret[k2.address], alpha(k2, r + 1))
    txs = [
        send_raw(node, k1, board_addr, board.proof_data(r, own[k1.address])),
        send_raw(node, k1, board_addr, board.proof_data(r, own[k1.address])),  # the same again
        send_raw(node, k2, board_addr, board.proof_data(r, other_round)),
        send_raw(node, k3, board_addr, board.proof_data(r, honest[keys[0].address])),
        # a valid proof by a masternode that then withdraws its collateral before the cutoff
        send_raw(node, k5, board_addr, board.proof_data(r, own[k5.address])),
    ]
    assert (await asyncio.to_thread(receipt, node, late_reg))["status"] == "0x1"
    txs.append(send_raw(node, k4, board_addr, board.proof_data(r, own[k4.address])))
    txs.append(registry_tx(node, registry_of(node, board_addr), k5, "withdraw"))
    for tx in txs:
        assert (await asyncio.to_thread(receipt, node, tx))["status"] == "0x1"
    assert head(node) <= sched.cutoff(r)
    await async_wait_until(
        lambda: all(r in rounds_of(a).results for a in agents), 120, f"round {r} decided"
    )
    agreed(agents, r)
    result = rounds_of(agents[0]).results[r]
    assert {n for n, _ in result.scores} == {k.address for k in keys}
    assert result.excluded == tuple(
        sorted(
            [
                (k1.address, "double-submission"),
                (k1.address, "double-submission"),
                (k2.address, "bad-challenge"),
                (k3.address, "bad-challenge"),
                (k4.address, "registered-too-late"),
                (k5.address, "not-a-masternode"),
            ]
        )
    )
