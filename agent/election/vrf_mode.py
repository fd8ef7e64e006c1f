"""Hardened-mode election: each candidate's score is its own ECVRF output over an input that
holds a seed nobody steers: round r's seed is a hash of round r-1's seed and the output of
round r-1's leader (Algorand-style chaining), so a block producer has no say in it and a
candidate can only withhold its own proof (docs/election.md states and measures the bound).
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from agent.attest import ecvrf
from agent.election.definite import keccak256
from agent.errors import ElectionError

VRF_ALPHA_TAG = b"edgence/election/vrf/v2"
SEED_TAG = b"edgence/election/seed/v1"
UINT64_MAX = 2**64 - 1
# Below this many proofs, starting worker processes costs more than it saves.
PARALLEL_THRESHOLD = 512


def vrf_alpha(chain_id: bytes, round: int, seed: bytes, node: bytes) -> bytes:
    """A node's VRF input in a round: tag ‖ chain id (32) ‖ round (8, BE) ‖ seed (32) ‖ node
    (20). The node id in it makes a VRF key copied into another registry entry worthless: the
    copier would need the secret key to prove for its own alpha."""
    if len(chain_id) != 32:
        raise ElectionError(f"chain id is {len(chain_id)} bytes, expected 32")
    if not 0 <= round <= UINT64_MAX:
        raise ElectionError(f"round {round} does not fit in 8 bytes")
    if len(seed) != 32:
        raise ElectionError(f"seed is {len(seed)} bytes, expected 32")
    if len(node) != 20:
        raise ElectionError(f"node id is {len(node)} bytes, expected 20")
    return VRF_ALPHA_TAG + chain_id + round.to_bytes(8, "big") + seed + node


def first_seed(chain_id: bytes, board: bytes, start_block_hash: bytes) -> bytes:
    """Round 0's seed: the board's start block hash, bound to the chain and the board (the one
    seed a block producer could choose: see docs/election.md)."""
    return keccak256(SEED_TAG + chain_id + board + start_block_hash)


def next_seed(seed: bytes, leader_output: bytes | None) -> bytes:
    """Round r+1's seed from round r's seed and its leader's VRF output (32 bytes); a round
    without a candidate chains with 32 zero bytes."""
    return keccak256(SEED_TAG + seed + (leader_output or bytes(32)))


@dataclass(frozen=True)
class VrfCandidate:
    """An eligible masternode's proof for this round. `public_key` (33-byte compressed) comes
    from the registry, not from the node's own message; `alpha` is the node's input."""

    node_id: bytes
    public_key: bytes
    proof: bytes
    alpha: bytes


class VrfOutcome(NamedTuple):
    """One verification: beta when the proof verified, else the VrfError reason."""

    beta: bytes | None
    reason: str | None


@dataclass(frozen=True)
class Exclusion:
    """A candidate left out; reason: double-submission, or an ecvrf.VrfError reason
    (bad-challenge, bad-gamma, bad-scalar, ...)."""

    node_id: bytes
    reason: str


@dataclass(frozen=True)
class VrfScoring:
    scores: dict[bytes, int]
    excluded: tuple[Exclusion, ...]


def _verify_one(alpha: bytes, public_key: bytes, proof: bytes) -> VrfOutcome:
    try:
        return VrfOutcome(ecvrf.verify(public_key, proof, alpha), None)
    except ecvrf.VrfError as exc:
        return VrfOutcome(None, exc.reason)


def _verify_chunk(chunk: list[tuple[bytes, bytes, bytes]]) -> list[VrfOutcome]:
    return [_verify_one(alpha, public_key, proof) for alpha, public_key, proof in chunk]


def verify_many(
    items: Sequence[tuple[bytes, bytes, bytes]],
    *,
    workers: int = 1,
    executor: Executor | None = None,
) -> list[VrfOutcome]:
    """Verify (alpha, public_key, proof) triples, in order.

    With `executor` (a long-lived ProcessPoolExecutor, say) or `workers` > 1 and at least
    PARALLEL_THRESHOLD items, the work is split into chunks across processes; a temporary pool
    made for `workers` is shut down before returning.
    """
    pairs = list(items)
    if executor is None and (workers <= 1 or len(pairs) < PARALLEL_THRESHOLD):
        return _verify_chunk(pairs)
    slots = max(workers, 1) * 4  # a few chunks per worker evens out uneven cores
    size = max(1, -(-len(pairs) // slots))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    if executor is not None:
        parts = executor.map(_verify_chunk, chunks)
        return [outcome for part in parts for outcome in part]
    # forkserver, not fork: the agent (and a test runner) has threads, and a forked child of a
    # threaded process can deadlock on a lock some thread held, or flush its parent's buffers.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        parts = pool.map(_verify_chunk, chunks)
        return [outcome for part in parts for outcome in part]


def score_vrf_candidates(
    candidates: Sequence[VrfCandidate],
    *,
    workers: int = 1,
    executor: Executor | None = None,
) -> VrfScoring:
    """Scores (int of beta, big-endian) of the candidates, and why the others are out: one
    submission per node id, and a proof that verifies for the node's alpha. (Who may stand at
    all, and with which key, the registry decides: agent/election/standing.py.)"""
    node_counts = Counter(cand.node_id for cand in candidates)
    excluded: list[Exclusion] = []
    eligible: list[VrfCandidate] = []
    for cand in candidates:
        if node_counts[cand.node_id] > 1:
            excluded.append(Exclusion(cand.node_id, "double-submission"))
        else:
            eligible.append(cand)
    outcomes = verify_many(
        [(cand.alpha, cand.public_key, cand.proof) for cand in eligible],
        workers=workers,
        executor=executor,
    )
    scores: dict[bytes, int] = {}
    for cand, (beta, reason) in zip(eligible, outcomes, strict=True):
        if beta is None:
            excluded.append(Exclusion(cand.node_id, reason or "invalid-proof"))
        else:
            scores[cand.node_id] = int.from_bytes(beta, "big")
    return VrfScoring(scores, tuple(excluded))
