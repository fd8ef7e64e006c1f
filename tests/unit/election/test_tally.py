"""Deciding a round from the board's logs and the registry's standings: discard rules, scores,
ties, the paper key recovered from the signature, the vrf seed chain, canonical JSON."""

from __future__ import annotations

import hashlib

from agent.attest import ecvrf
from agent.attest.keys import GatewayKey
from agent.attest.selection import sign_selection
from agent.election.merge import Candidate, hash_merge_scores
from agent.election.standing import Standing
from agent.election.tally import (
    BoardSubmission,
    RoundContext,
    RoundResult,
    chain_id_bytes,
    tally_paper,
    tally_vrf,
)
from agent.election.vrf_mode import next_seed, vrf_alpha

CHAIN_ID = 31337
ROUND = 4
CTX = RoundContext(ROUND, CHAIN_ID, "0x" + "ab" * 20, 200, 205, "0x" + "cd" * 32, 2)
DEFINITE = hashlib.sha256(b"definite").digest()
SEED = hashlib.sha256(b"seed").digest()


def secret(i: int) -> bytes:
    return hashlib.sha256(b"tally node %d" % i).digest()


def node(i: int) -> bytes:
    return bytes.fromhex(GatewayKey.from_bytes(secret(i)).address[2:])


def addr(i: int) -> str:
    return "0x" + node(i).hex()


def standing(n: int, **reasons: str) -> dict[bytes, Standing]:
    """Nodes 0..n-1 stand with their VRF keys, unless `reasons` (n<i>=reason) says otherwise."""
    out = {}
    for i in range(n):
        reason = reasons.get(f"n{i}")
        out[node(i)] = Standing(None if reason else ecvrf.public_key_of(secret(100 + i)), reason)
    return out


def paper_sub(i: int, block: int = 201, definite: bytes = DEFINITE) -> BoardSubmission:
    sig = sign_selection(secret(i), chain_id_bytes(CHAIN_ID), ROUND, definite)
    return BoardSubmission(node(i), definite, sig, block)


def vrf_sub(i: int, block: int = 201, seed: bytes = SEED) -> BoardSubmission:
    alpha = vrf_alpha(chain_id_bytes(CHAIN_ID), ROUND, seed, node(i))
    return BoardSubmission(node(i), bytes(32), ecvrf.prove(secret(100 + i), alpha), block)


def test_paper_round_with_no_submissions_elects_nobody() -> None:
    result = tally_paper(CTX, DEFINITE, [], {})
    assert result.elected == () and result.scores == () and result.excluded == ()


def test_paper_round_with_one_candidate_elects_it_with_score_zero() -> None:
    result = tally_paper(CTX, DEFINITE, [paper_sub(0)], standing(1))
    assert result.elected == (addr(0),)
    assert result.scores == ((addr(0), "0" * 64),)


def test_paper_scores_are_the_hash_merge_and_the_top_k_win() -> None:
    subs = [paper_sub(i) for i in range(5)]
    result = tally_paper(CTX, DEFINITE, subs, standing(5))
    expected = hash_merge_scores([Candidate(s.node, s.payload) for s in subs])
    assert dict(result.scores) == {"0x" + n.hex(): f"{v:064x}" for n, v in expected.items()}
    best = sorted(expected, key=lambda n: (-expected[n], n))[:2]
    assert result.elected == tuple("0x" + n.hex() for n in best)


def test_paper_submissions_outside_the_window_are_illegal() -> None:
    subs = [paper_sub(0, block=200), paper_sub(1, block=206), paper_sub(2, block=205)]
    result = tally_paper(CTX, DEFINITE, subs, standing(3))
    assert [n for n, _ in result.scores] == [addr(2)]
    assert {r for _, r in result.excluded} == {"wrong-round"}


def test_paper_nodes_that_do_not_stand_are_excluded_with_the_registry_reason() -> None:
    subs = [paper_sub(i) for i in range(4)]
    st = standing(3, n1="inactive", n2="not-a-masternode")  # node 3: no registry entry at all
    result = tally_paper(CTX, DEFINITE, subs, st)
    assert [n for n, _ in result.scores] == [addr(0)]
    assert result.excluded == tuple(
        sorted(
            [(addr(1), "inactive"), (addr(2), "not-a-masternode"), (addr(3), "not-a-masternode")]
        )
    )


def test_paper_signature_by_another_key_than_the_senders_is_bad() -> None:
    """The key is recovered from the signature and must be the sender's own: a copy of node
    0's signature sent by node 1 fails, and node 0 is unharmed."""
    copied = BoardSubmission(node(1), DEFINITE, paper_sub(0).payload, 201)
    result = tally_paper(CTX, DEFINITE, [paper_sub(0), copied], standing(2))
    assert [n for n, _ in result.scores] == [addr(0)]
    assert result.excluded == ((addr(1), "bad-signature"),)


def test_vrf_scores_are_own_outputs_and_nodes_that_do_not_stand_are_out() -> None:
    st = standing(5, n2="registered-too-late")
    subs = [vrf_sub(0), vrf_sub(1), vrf_sub(2), vrf_sub(3), vrf_sub(1, block=206), vrf_sub(4, 200)]
    st.pop(node(3))
    result = tally_vrf(CTX, SEED, subs, st)
    beta0 = ecvrf.proof_to_hash(subs[0].payload)
    assert dict(result.scores) == {addr(0): beta0.hex()}
    assert result.excluded == tuple(
        sorted(
            [
                (addr(1), "double-submission"),  # one of them was late:
                (addr(1), "double-submission"),  # still two submissions
                (addr(2), "registered-too-late"),
                (addr(3), "not-a-masternode"),
                (addr(4), "outside-window"),
            ]
        )
    )


def test_vrf_proof_over_another_seed_or_for_another_node_fails() -> None:
    other_seed = vrf_sub(0, seed=hashlib.sha256(b"another seed").digest())
    # Node 1 registered node 0's VRF key (a copy) and sends node 0's proof: its own alpha
    # names node 1, so the copied proof does not verify, and node 0 is unharmed.
    st = standing(3)
    st[node(1)] = Standing(st[node(0)].vrf_key, None)
    copied = BoardSubmission(node(1), bytes(32), vrf_sub(0).payload, 201)
    result = tally_vrf(CTX, SEED, [vrf_sub(0), copied], st)
    assert [n for n, _ in result.scores] == [addr(0)]
    assert [n for n, _ in result.excluded] == [addr(1)]
    assert tally_vrf(CTX, SEED, [other_seed], st).scores == ()


def test_the_next_seed_chains_through_the_leaders_output() -> None:
    result = tally_vrf(CTX, SEED, [vrf_sub(i) for i in range(4)], standing(4))
    leader = result.elected[0]
    assert result.leader_output() == bytes.fromhex(dict(result.scores)[leader])
    assert max(int(s, 16) for _, s in result.scores) == int.from_bytes(
        result.leader_output() or b""
    )
    assert result.seed == SEED
    nxt = next_seed(result.seed, result.leader_output())
    assert nxt != SEED and len(nxt) == 32
    empty = tally_vrf(CTX, SEED, [], standing(0))
    assert empty.leader_output() is None
    assert next_seed(SEED, None) not in (SEED, nxt)


def test_the_order_of_the_logs_does_not_matter() -> None:
    subs = [paper_sub(i) for i in range(4)]
    forward = tally_paper(CTX, DEFINITE, subs, standing(4))
    assert forward == tally_paper(CTX, DEFINITE, subs[::-1], standing(4))


def test_result_json_is_canonical_and_round_trips() -> None:
    result = tally_paper(CTX, DEFINITE, [paper_sub(i) for i in range(3)], standing(3))
    again = tally_paper(CTX, DEFINITE, [paper_sub(i) for i in (2, 0, 1)], standing(3))
    assert result.to_json() == again.to_json()
    assert RoundResult.from_json(result.to_json()) == result
    assert b'"definite_hash":"0x' + DEFINITE.hex().encode() in result.to_json()
    vrf = tally_vrf(CTX, SEED, [vrf_sub(0)], standing(1))
    assert b'"seed":"0x' + SEED.hex().encode() in vrf.to_json()
    assert RoundResult.from_json(vrf.to_json()) == vrf
