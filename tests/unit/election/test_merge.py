"""Paper-mode hash merge: the O(n) score equals the definition, top-k, and submission filtering."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest
from coincurve import PrivateKey

from agent.attest.selection import N, sign_selection
from agent.election.definite import keccak256
from agent.election.merge import (
    Candidate,
    SelectionSubmission,
    elect_top_k,
    filter_submissions,
    hash_merge_scores,
    naive_hash_merge_scores,
)
from agent.errors import ElectionError

CHAIN = hashlib.sha256(b"chain").digest()
ROUND = 7
DEFINITE = hashlib.sha256(b"definite").digest()


def _random_candidates(rng: random.Random, n: int) -> list[Candidate]:
    return [Candidate(rng.randbytes(20), rng.randbytes(64)) for _ in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 50])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_linear_merge_equals_the_quadratic_definition(n: int, seed: int) -> None:
    candidates = _random_candidates(random.Random(seed), n)
    assert hash_merge_scores(candidates) == naive_hash_merge_scores(candidates)


def test_no_candidates_give_no_scores() -> None:
    assert hash_merge_scores([]) == {}
    assert elect_top_k({}, 3) == []


def test_lone_candidate_scores_zero_and_is_elected() -> None:
    # The XOR over "all other candidates" is empty, so the score is 0 by the definition.
    scores = hash_merge_scores([Candidate(b"solo", b"sig")])
    assert scores == {b"solo": 0}
    assert elect_top_k(scores, 2) == [b"solo"]


def test_two_candidates_score_each_others_hash() -> None:
    scores = hash_merge_scores([Candidate(b"a", b"sig-a"), Candidate(b"b", b"sig-b")])
    assert scores[b"a"] == int.from_bytes(keccak256(b"sig-b"), "big")
    assert scores[b"b"] == int.from_bytes(keccak256(b"sig-a"), "big")


def test_duplicate_node_in_the_merge_raises() -> None:
    with pytest.raises(ElectionError, match="twice"):
        hash_merge_scores([Candidate(b"a", b"1"), Candidate(b"a", b"2")])


def test_top_k_takes_the_highest_scores_best_first() -> None:
    scores = {b"a": 5, b"b": 9, b"c": 1, b"d": 7}
    assert elect_top_k(scores, 2) == [b"b", b"d"]
    assert elect_top_k(scores, 3) == [b"b", b"d", b"a"]


def test_top_k_breaks_ties_by_node_id_ascending() -> None:
    scores = {b"\x03": 4, b"\x01": 4, b"\x02": 4, b"\x00": 1}
    assert elect_top_k(scores, 2) == [b"\x01", b"\x02"]
    assert elect_top_k(scores, 4) == [b"\x01", b"\x02", b"\x03", b"\x00"]


def test_top_k_with_no_more_candidates_than_seats_returns_all_in_order() -> None:
    scores = {b"x": 2, b"y": 3}
    assert elect_top_k(scores, 2) == [b"y", b"x"]
    assert elect_top_k(scores, 10) == [b"y", b"x"]


def test_top_zero_is_empty_and_negative_k_raises() -> None:
    assert elect_top_k({b"x": 1}, 0) == []
    with pytest.raises(ElectionError):
        elect_top_k({b"x": 1}, -1)


def test_top_k_agrees_with_a_full_sort() -> None:
    rng = random.Random(9)
    scores = {rng.randbytes(4): rng.randrange(8) for _ in range(200)}  # many ties
    expected = [node for node, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]
    for k in (0, 1, 5, 50, 200, 300):
        assert elect_top_k(scores, k) == expected[:k]


# --- filtering submissions, with real keys and signatures -----------------------------------


def _secret(i: int) -> bytes:
    return hashlib.sha256(b"node %d" % i).digest()


def _node(i: int) -> bytes:
    return b"node-%02d" % i


@pytest.fixture(scope="module")
def public_keys() -> dict[bytes, bytes]:
    return {_node(i): PrivateKey(_secret(i)).public_key.format() for i in range(10)}


def _submission(i: int) -> SelectionSubmission:
    signature = sign_selection(_secret(i), CHAIN, ROUND, DEFINITE)
    return SelectionSubmission(_node(i), ROUND, DEFINITE, signature)


def _filter(subs: list[SelectionSubmission], keys: dict[bytes, bytes]) -> dict[bytes, str]:
    result = filter_submissions(
        subs, chain_id=CHAIN, round=ROUND, definite_hash=DEFINITE, public_keys=keys
    )
    outcome = {cand.node_id: "accepted" for cand in result.candidates}
    for rejection in result.rejected:
        assert rejection.node_id is not None
        assert rejection.node_id not in outcome
        outcome[rejection.node_id] = rejection.reason
    return outcome


def test_legal_submissions_are_all_kept_sorted(public_keys: dict[bytes, bytes]) -> None:
    subs = [_submission(i) for i in (3, 1, 2)]
    result = filter_submissions(
        subs, chain_id=CHAIN, round=ROUND, definite_hash=DEFINITE, public_keys=public_keys
    )
    assert [cand.node_id for cand in result.candidates] == [_node(1), _node(2), _node(3)]
    assert result.rejected == ()


def test_illegal_submissions_are_dropped_with_their_reason(
    public_keys: dict[bytes, bytes],
) -> None:
    other_hash = hashlib.sha256(b"other").digest()
    subs = [
        _submission(0),
        replace(_submission(1), signature=None),
        replace(_submission(2), definite_hash=other_hash),
        replace(_submission(3), signature=sign_selection(_secret(3), CHAIN, ROUND, other_hash)),
        replace(_submission(4), round=ROUND + 1),
        replace(_submission(5), signature=sign_selection(_secret(6), CHAIN, ROUND, DEFINITE)),
        SelectionSubmission(b"stranger", ROUND, DEFINITE, b"\x01" * 64),
    ]
    assert _filter(subs, public_keys) == {
        _node(0): "accepted",
        _node(1): "missing-field",
        _node(2): "wrong-definite-hash",
        _node(3): "bad-signature",
        _node(4): "wrong-round",
        _node(5): "bad-signature",
        b"stranger": "unregistered",
    }


def test_high_s_copy_is_a_bad_signature(public_keys: dict[bytes, bytes]) -> None:
    signature = sign_selection(_secret(0), CHAIN, ROUND, DEFINITE)
    high = signature[:32] + (N - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")
    assert _filter([replace(_submission(0), signature=high)], public_keys) == {
        _node(0): "bad-signature"
    }


def test_submission_without_a_node_id_is_dropped(public_keys: dict[bytes, bytes]) -> None:
    result = filter_submissions(
        [replace(_submission(0), node_id=None), _submission(1)],
        chain_id=CHAIN,
        round=ROUND,
        definite_hash=DEFINITE,
        public_keys=public_keys,
    )
    assert [cand.node_id for cand in result.candidates] == [_node(1)]
    assert [(r.node_id, r.reason) for r in result.rejected] == [(None, "missing-field")]


def test_double_submitters_lose_every_submission(public_keys: dict[bytes, bytes]) -> None:
    second = sign_selection(_secret(1), CHAIN, ROUND, DEFINITE, nonce_entropy=b"\x01" * 32)
    subs = [
        _submission(0),
        _submission(1),
        replace(_submission(1), signature=second),  # two legal signatures: both dropped
        _submission(2),
        replace(_submission(2), signature=b"\x00" * 64),  # legal + illegal: both dropped
        _submission(3),
        _submission(3),  # the very same submission twice still counts as two
        _submission(4),
    ]
    result = filter_submissions(
        subs, chain_id=CHAIN, round=ROUND, definite_hash=DEFINITE, public_keys=public_keys
    )
    assert [cand.node_id for cand in result.candidates] == [_node(0), _node(4)]
    doubles = [r.node_id or b"" for r in result.rejected if r.reason == "double-submission"]
    assert sorted(doubles) == [_node(1), _node(1), _node(2), _node(2), _node(3), _node(3)]
    assert len(result.rejected) == 6


def test_filter_then_merge_then_elect(public_keys: dict[bytes, bytes]) -> None:
    subs = [_submission(i) for i in range(10)]
    result = filter_submissions(
        subs, chain_id=CHAIN, round=ROUND, definite_hash=DEFINITE, public_keys=public_keys
    )
    scores = hash_merge_scores(result.candidates)
    winners = elect_top_k(scores, 3)
    assert len(winners) == 3
    assert scores[winners[0]] >= scores[winners[1]] >= scores[winners[2]]
    assert min(scores[w] for w in winners) >= max(
        score for node, score in scores.items() if node not in winners
    )
