"""Why hardened mode exists: late colluders grind paper-mode signatures and almost always win;
the same attack on VRF scores gains nothing. Also the VRF-mode scoring rules it relies on.

Win = at least one of the two colluders among the k elected. With every ranking equally
likely, P(win) = 1 - C(n-2, k) / C(n, k): for n=10, k=2 that is 17/45 = 0.378 (2k/n = 0.4 is
the expected number of colluder SEATS per round, a different quantity).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from math import comb, sqrt

import pytest
from coincurve import PrivateKey

from agent.attest import ecvrf
from agent.attest.selection import sign_selection
from agent.election.merge import (
    Candidate,
    SelectionSubmission,
    elect_top_k,
    filter_submissions,
    hash_merge_scores,
)
from agent.election.vrf_mode import (
    VRF_ALPHA_TAG,
    VrfCandidate,
    score_vrf_candidates,
    verify_many,
    vrf_alpha,
)
from agent.errors import ElectionError

NODES = 10
SEATS = 2
ROUNDS = 300
TRIES = 64  # signatures (paper) or proofs (VRF) each colluder may try per round: G
CHAIN = hashlib.sha256(b"grinding chain").digest()

HONEST = [b"honest-%d" % i for i in range(NODES - 2)]
COLLUDERS = [b"colluder-a", b"colluder-b"]
ALL_NODES = HONEST + COLLUDERS


def _alpha(round_: int, seed: bytes, node_id: bytes) -> bytes:
    """A node's alpha (the node ids here are names: their 20-byte form is a hash of them)."""
    return vrf_alpha(CHAIN, round_, seed, hashlib.sha256(node_id).digest()[:20])


def _secret(node_id: bytes) -> bytes:
    return hashlib.sha256(b"grinding key " + node_id).digest()


def fair_win_rate(nodes: int, seats: int, colluders: int = 2) -> float:
    return 1 - comb(nodes - colluders, seats) / comb(nodes, seats)


FAIR = fair_win_rate(NODES, SEATS)
# Standard deviation of a win rate measured over ROUNDS independent fair rounds (~0.028).
FAIR_SD = sqrt(FAIR * (1 - FAIR) / ROUNDS)


def test_fair_share_follows_the_hypergeometric_law() -> None:
    assert pytest.approx(17 / 45) == FAIR
    assert fair_win_rate(10, 1) == pytest.approx(0.2)
    assert fair_win_rate(3, 2) == pytest.approx(1.0)


def _grind(
    make_a: Callable[[int], bytes],
    make_b: Callable[[int], bytes],
    tries: int,
    seen_as: Callable[[bytes], bytes],
    wins: Callable[[bytes, bytes], bool],
) -> tuple[bytes, bytes, set[bytes], set[bytes]]:
    """The colluders' search over every pair of their tries, made lazily; pairs that look the
    same to the election (`seen_as`: the signature itself, or a proof's VRF output) are tried
    once. Returns the first winning pair (else the first pair) and what each try looked like."""
    tries_a: list[tuple[bytes, bytes]] = []
    tries_b: list[tuple[bytes, bytes]] = []
    tested: set[tuple[bytes, bytes]] = set()
    for i in range(tries):
        made = make_a(i)
        tries_a.append((made, seen_as(made)))
        for j in range(tries):
            if j == len(tries_b):
                made = make_b(j)
                tries_b.append((made, seen_as(made)))
            (try_a, view_a), (try_b, view_b) = tries_a[i], tries_b[j]
            if (view_a, view_b) in tested:
                continue
            tested.add((view_a, view_b))
            if wins(try_a, try_b):
                return try_a, try_b, {v for _, v in tries_a}, {v for _, v in tries_b}
    return tries_a[0][0], tries_b[0][0], {v for _, v in tries_a}, {v for _, v in tries_b}


# --- paper mode, with real signatures and real verification ----------------------------------


@pytest.fixture(scope="module")
def public_keys() -> dict[bytes, bytes]:
    return {node: PrivateKey(_secret(node)).public_key.format() for node in ALL_NODES}


def _paper_round(
    rng: random.Random, round_: int, tries: int, public_keys: dict[bytes, bytes]
) -> bool:
    definite = rng.randbytes(32)
    honest = [
        Candidate(node, sign_selection(_secret(node), CHAIN, round_, definite)) for node in HONEST
    ]

    def signer(node: bytes) -> Callable[[int], bytes]:
        def sign_try(i: int) -> bytes:
            entropy = None if i == 0 else i.to_bytes(32, "big")
            return sign_selection(_secret(node), CHAIN, round_, definite, nonce_entropy=entropy)

        return sign_try

    def wins(sig_a: bytes, sig_b: bytes) -> bool:
        pair = [Candidate(COLLUDERS[0], sig_a), Candidate(COLLUDERS[1], sig_b)]
        winners = elect_top_k(hash_merge_scores(honest + pair), SEATS)
        return bool(set(winners) & set(COLLUDERS))

    sig_a, sig_b, _, _ = _grind(
        signer(COLLUDERS[0]), signer(COLLUDERS[1]), tries, lambda sig: sig, wins
    )
    # What every agent then computes from the chain: filter (verifies every signature and the
    # one-submission rule), merge, elect.
    chosen = [*honest, Candidate(COLLUDERS[0], sig_a), Candidate(COLLUDERS[1], sig_b)]
    result = filter_submissions(
        [SelectionSubmission(node, round_, definite, sig) for node, sig in chosen],
        chain_id=CHAIN,
        round=round_,
        definite_hash=definite,
        public_keys=public_keys,
    )
    assert len(result.candidates) == NODES and not result.rejected
    winners = elect_top_k(hash_merge_scores(result.candidates), SEATS)
    return bool(set(winners) & set(COLLUDERS))


def test_paper_mode_without_grinding_gives_the_fair_share(
    public_keys: dict[bytes, bytes],
) -> None:
    rng = random.Random(20240601)
    rate = sum(_paper_round(rng, r, 1, public_keys) for r in range(ROUNDS)) / ROUNDS
    # 5 standard deviations (~0.14): a fresh seed fails this with probability below 1e-6.
    assert abs(rate - FAIR) < 5 * FAIR_SD


def test_late_colluders_grinding_signatures_win_paper_mode_far_above_fair_share(
    public_keys: dict[bytes, bytes],
) -> None:
    rng = random.Random(20240602)
    rate = sum(_paper_round(rng, r, TRIES, public_keys) for r in range(ROUNDS)) / ROUNDS
    # Each of A's tries changes B's score and vice versa (score_B = X_honest ^ H(sig_A)), so
    # with 64 x 64 pairs a losing round is essentially impossible; observed rate is 1.0.
    assert rate > 2 * FAIR
    assert rate > 0.95


# --- VRF mode: the same attack -----------------------------------------------------------------


def _vrf_round(rng: random.Random, round_: int, tries: int) -> tuple[bool, int]:
    """One round; returns (colluders won, most distinct outputs one colluder could choose)."""
    seed = rng.randbytes(32)  # the round's seed: the colluders cannot choose it
    honest = [
        VrfCandidate(
            node,
            ecvrf.public_key_of(_secret(node)),
            ecvrf.prove(_secret(node), _alpha(round_, seed, node)),
            _alpha(round_, seed, node),
        )
        for node in HONEST
    ]
    honest_betas = {cand.node_id: ecvrf.proof_to_hash(cand.proof) for cand in honest}

    def prover(node: bytes) -> Callable[[int], bytes]:
        def prove_try(i: int) -> bytes:
            nonce = None if i == 0 else rng.randrange(1, ecvrf.N)
            return ecvrf.prove(_secret(node), _alpha(round_, seed, node), nonce=nonce)

        return prove_try

    def wins(proof_a: bytes, proof_b: bytes) -> bool:
        scores = {node: int.from_bytes(beta, "big") for node, beta in honest_betas.items()}
        scores[COLLUDERS[0]] = int.from_bytes(ecvrf.proof_to_hash(proof_a), "big")
        scores[COLLUDERS[1]] = int.from_bytes(ecvrf.proof_to_hash(proof_b), "big")
        return bool(set(elect_top_k(scores, SEATS)) & set(COLLUDERS))

    proof_a, proof_b, views_a, views_b = _grind(
        prover(COLLUDERS[0]), prover(COLLUDERS[1]), tries, ecvrf.proof_to_hash, wins
    )
    colluders = [
        VrfCandidate(node, ecvrf.public_key_of(_secret(node)), proof, _alpha(round_, seed, node))
        for node, proof in zip(COLLUDERS, (proof_a, proof_b), strict=True)
    ]
    scoring = score_vrf_candidates(honest + colluders)
    assert len(scoring.scores) == NODES and not scoring.excluded
    winners = elect_top_k(scoring.scores, SEATS)
    return bool(set(winners) & set(COLLUDERS)), max(len(views_a), len(views_b))


@pytest.mark.timeout(120)  # many simulated rounds of ECVRF proofs: 13-27 s on a busy machine
def test_the_same_attack_on_vrf_mode_stays_at_the_fair_share() -> None:
    rng = random.Random(20240603)
    outcomes = [_vrf_round(rng, r, TRIES) for r in range(ROUNDS)]
    rate = sum(won for won, _ in outcomes) / ROUNDS
    # Uniqueness: in every round they lost, each colluder made all 64 valid proofs, and all of
    # them had one and the same output: there was nothing to choose from.
    assert max(choices for _, choices in outcomes) == 1
    assert abs(rate - FAIR) < 5 * FAIR_SD
    assert rate < 2 * FAIR


# --- VRF-mode scoring rules ------------------------------------------------------------------


SEED = hashlib.sha256(b"seed").digest()
NODE20 = bytes(range(20))
ALPHA = vrf_alpha(CHAIN, 5, SEED, NODE20)


def _candidate(i: int, alpha: bytes = ALPHA) -> VrfCandidate:
    secret = _secret(b"vrf-%d" % i)
    node = b"vrf-%d" % i
    return VrfCandidate(node, ecvrf.public_key_of(secret), ecvrf.prove(secret, alpha), ALPHA)


def test_vrf_alpha_is_tag_chain_round_seed_node() -> None:
    alpha = vrf_alpha(CHAIN, 5, SEED, NODE20)
    assert alpha == b"edgence/election/vrf/v2" + CHAIN + (5).to_bytes(8, "big") + SEED + NODE20
    assert alpha.startswith(VRF_ALPHA_TAG) and len(alpha) == len(VRF_ALPHA_TAG) + 92


@pytest.mark.parametrize(
    ("chain", "round_", "seed", "node"),
    [
        (CHAIN[:31], 1, CHAIN, NODE20),
        (CHAIN, -1, CHAIN, NODE20),
        (CHAIN, 2**64, CHAIN, NODE20),
        (CHAIN, 1, CHAIN[:5], NODE20),
        (CHAIN, 1, CHAIN, NODE20[:19]),
    ],
)
def test_vrf_alpha_rejects_malformed_parts(
    chain: bytes, round_: int, seed: bytes, node: bytes
) -> None:
    with pytest.raises(ElectionError):
        vrf_alpha(chain, round_, seed, node)


def test_vrf_score_is_the_candidates_own_output() -> None:
    cand = _candidate(0)
    scoring = score_vrf_candidates([cand])
    beta = ecvrf.verify(cand.public_key, cand.proof, ALPHA)
    assert scoring.scores == {cand.node_id: int.from_bytes(beta, "big")}


def test_bad_proofs_are_excluded_and_reported() -> None:
    good = _candidate(0)
    other_alpha = _candidate(1, alpha=ALPHA + b"x")
    cand = _candidate(2)
    tampered = VrfCandidate(cand.node_id, cand.public_key, cand.proof[:80] + b"\x00", ALPHA)
    other = _candidate(3)
    short = VrfCandidate(other.node_id, other.public_key, other.proof[:40], ALPHA)
    scoring = score_vrf_candidates([good, other_alpha, tampered, short])
    assert list(scoring.scores) == [good.node_id]
    reasons = {e.node_id: e.reason for e in scoring.excluded}
    assert reasons[other_alpha.node_id] == "bad-challenge"
    assert reasons[tampered.node_id] in {"bad-challenge", "bad-scalar"}
    assert reasons[b"vrf-3"] == "bad-proof-length"


def test_double_submitters_are_excluded_and_a_copied_key_is_worthless() -> None:
    a, b, c = _candidate(0), _candidate(1), _candidate(2)
    again = VrfCandidate(
        a.node_id, a.public_key, ecvrf.prove(_secret(b"vrf-0"), ALPHA, nonce=5), ALPHA
    )
    # A copycat registered b's key: its alpha names itself, b's proof does not verify for it.
    copy_alpha = vrf_alpha(CHAIN, 5, SEED, bytes(20))
    borrowed = VrfCandidate(b"copycat", b.public_key, b.proof, copy_alpha)
    scoring = score_vrf_candidates([a, again, b, borrowed, c])
    assert sorted(scoring.scores) == sorted([b.node_id, c.node_id])
    assert sorted((e.node_id, e.reason) for e in scoring.excluded) == sorted(
        [
            (a.node_id, "double-submission"),
            (a.node_id, "double-submission"),
            (b"copycat", "bad-challenge"),
        ]
    )


def test_parallel_verification_equals_serial() -> None:
    candidates = [_candidate(i) for i in range(40)]
    items = [(ALPHA, cand.public_key, cand.proof) for cand in candidates]
    items[7] = (ALPHA, items[7][1], items[8][2])  # one bad proof keeps its place
    serial = verify_many(items)
    # forkserver: forking the threaded test process could deadlock the children
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("forkserver")) as pool:
        parallel = verify_many(items, executor=pool)
    assert parallel == serial
    assert serial[7].beta is None and serial[7].reason == "bad-challenge"
    assert all(outcome.beta is not None for i, outcome in enumerate(serial) if i != 7)
