"""Deciding a round from the board's logs: discard rules, scores, ties, canonical JSON."""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey

from agent.attest import ecvrf
from agent.attest.selection import sign_selection
from agent.election.merge import Candidate, hash_merge_scores
from agent.election.tally import (
    BoardSubmission,
    NodeKeys,
    RoundContext,
    RoundResult,
    chain_id_bytes,
    tally_paper,
    tally_vrf,
)
from agent.election.vrf_mode import vrf_alpha

CHAIN_ID = 31337
ROUND = 4
CTX = RoundContext(ROUND, CHAIN_ID, "0x" + "ab" * 20, 200, 205, "0x" + "cd" * 32, 2)
DEFINITE = hashlib.sha256(b"definite").digest()
SEED = hashlib.sha256(b"seed").digest()
ALPHA = vrf_alpha(chain_id_bytes(CHAIN_ID), ROUND, SEED)


def secret(i: int) -> bytes:
    return hashlib.sha256(b"tally node %d" % i).digest()


def node(i: int) -> bytes:
    return bytes([i]) * 20


def keys(n: int, registered_at: int = 10) -> dict[bytes, NodeKeys]:
    return {
        node(i): NodeKeys(
            registered_at,
            PrivateKey(secret(i)).public_key.format(),
            ecvrf.public_key_of(secret(100 + i)),
        )
        for i in range(n)
    }


def paper_sub(i: int, block: int = 201, definite: bytes = DEFINITE) -> BoardSubmission:
    sig = sign_selection(secret(i), chain_id_bytes(CHAIN_ID), ROUND, definite)
    return BoardSubmission(node(i), definite, sig, block)


def vrf_sub(i: int, block: int = 201) -> BoardSubmission:
    return BoardSubmission(node(i), bytes(32), ecvrf.prove(secret(100 + i), ALPHA), block)


def test_paper_round_with_no_submissions_elects_nobody() -> None:
    result = tally_paper(CTX, DEFINITE, [], {})
    assert result.elected == () and result.scores == () and result.excluded == ()


def test_paper_round_with_one_candidate_elects_it_with_score_zero() -> None:
    result = tally_paper(CTX, DEFINITE, [paper_sub(0)], keys(1))
    assert result.elected == ("0x" + node(0).hex(),)
    assert result.scores == (("0x" + node(0).hex(), "0" * 64),)


def test_paper_scores_are_the_hash_merge_and_the_top_k_win() -> None:
    subs = [paper_sub(i) for i in range(5)]
    result = tally_paper(CTX, DEFINITE, subs, keys(5))
    expected = hash_merge_scores([Candidate(s.node, s.payload) for s in subs])
    assert dict(result.scores) == {"0x" + n.hex(): f"{v:064x}" for n, v in expected.items()}
    best = sorted(expected, key=lambda n: (-expected[n], n))[:2]
    assert result.elected == tuple("0x" + n.hex() for n in best)


def test_paper_submissions_outside_the_window_are_illegal() -> None:
    subs = [paper_sub(0, block=200), paper_sub(1, block=206), paper_sub(2, block=205)]
    result = tally_paper(CTX, DEFINITE, subs, keys(3))
    assert [n for n, _ in result.scores] == ["0x" + node(2).hex()]
    assert {r for _, r in result.excluded} == {"wrong-round"}


def test_paper_unregistered_sender_is_excluded() -> None:
    result = tally_paper(CTX, DEFINITE, [paper_sub(0), paper_sub(1)], keys(1))
    assert result.excluded == (("0x" + node(1).hex(), "unregistered"),)


def test_vrf_scores_are_own_outputs_and_late_or_unregistered_nodes_are_out() -> None:
    ks = keys(3)
    ks[node(2)] = NodeKeys(CTX.boundary, ks[node(2)].public_key, ks[node(2)].vrf_key)
    subs = [vrf_sub(0), vrf_sub(1), vrf_sub(2), vrf_sub(3), vrf_sub(1, block=206), vrf_sub(4, 200)]
    ks[node(4)] = keys(5)[node(4)]
    result = tally_vrf(CTX, SEED, ALPHA, subs, ks)
    beta0 = ecvrf.proof_to_hash(subs[0].payload)
    assert dict(result.scores) == {"0x" + node(0).hex(): beta0.hex()}
    assert result.excluded == tuple(
        sorted(
            [
                ("0x" + node(1).hex(), "double-submission"),  # one of them was late:
                ("0x" + node(1).hex(), "double-submission"),  # still two submissions
                ("0x" + node(2).hex(), "registered-too-late"),
                ("0x" + node(3).hex(), "unregistered"),
                ("0x" + node(4).hex(), "outside-window"),
            ]
        )
    )


def test_the_order_of_the_logs_does_not_matter() -> None:
    subs = [paper_sub(i) for i in range(4)]
    forward = tally_paper(CTX, DEFINITE, subs, keys(4))
    assert forward == tally_paper(CTX, DEFINITE, subs[::-1], keys(4))


def test_result_json_is_canonical_and_round_trips() -> None:
    result = tally_paper(CTX, DEFINITE, [paper_sub(i) for i in range(3)], keys(3))
    again = tally_paper(CTX, DEFINITE, [paper_sub(i) for i in (2, 0, 1)], keys(3))
    assert result.to_json() == again.to_json()
    assert RoundResult.from_json(result.to_json()) == result
    assert b'"definite_hash":"0x' + DEFINITE.hex().encode() in result.to_json()
    vrf = tally_vrf(CTX, SEED, ALPHA, [vrf_sub(0)], keys(1))
    assert b'"seed_block_hash"' in vrf.to_json()
    assert RoundResult.from_json(vrf.to_json()) == vrf
