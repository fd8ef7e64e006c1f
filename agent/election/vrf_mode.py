"""Hardened-mode election: each candidate's score is its own ECVRF output on a seed it could
not choose, so a candidate cannot grind it; candidates registered after the seed are left out.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from agent.attest import ecvrf
from agent.errors import ElectionError

VRF_ALPHA_TAG = b"edgence/election/vrf/v1"
UINT64_MAX = 2**64 - 1
# Below this many proofs, starting worker processes costs more than it saves.
PARALLEL_THRESHOLD = 512


def vrf_alpha(chain_id: bytes, round: int, seed_block_hash: bytes) -> bytes:
    """The VRF input of a round: tag ‖ chain id (32) ‖ round (8, BE) ‖ seed block hash (32)."""
    if len(chain_id) != 32:
        raise ElectionError(f"chain id is {len(chain_id)} bytes, expected 32")
    if not 0 <= round <= UINT64_MAX:
        raise ElectionError(f"round {round} does not fit in 8 bytes")
    if len(seed_block_hash) != 32:
        raise ElectionError(f"seed block hash is {len(seed_block_hash)} bytes, expected 32")
    return VRF_ALPHA_TAG + chain_id + round.to_bytes(8, "big") + seed_block_hash


@dataclass(frozen=True)
class VrfCandidate:
    """A registered masternode's proof for this round. `public_key` (33-byte compressed) and
    `registered_at_block` come from the registry, not from the node's own message."""

    node_id: bytes
    public_key: bytes
    proof: bytes
    registered_at_block: int


class VrfOutcome(NamedTuple):
    """One verification: beta when the proof verified, else the VrfError reason."""

    beta: bytes | None
    reason: str | None


@dataclass(frozen=True)
class Exclusion:
    """A candidate left out; reason: registered-too-late, double-submission, shared-key, or an
    ecvrf.VrfError reason (bad-challenge, bad-gamma, bad-scalar, ...)."""

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


def _verify_chunk(alpha: bytes, chunk: list[tuple[bytes, bytes]]) -> list[VrfOutcome]:
    return [_verify_one(alpha, public_key, proof) for public_key, proof in chunk]


def verify_many(
    alpha: bytes,
    items: Sequence[tuple[bytes, bytes]],
    *,
    workers: int = 1,
    executor: Executor | None = None,
) -> list[VrfOutcome]:
    """Verify (public_key, proof) pairs for one alpha, in order.

    With `executor` (a long-lived ProcessPoolExecutor, say) or `workers` > 1 and at least
    PARALLEL_THRESHOLD items, the work is split into chunks across processes; a temporary pool
    made for `workers` is shut down before returning.
    """
    pairs = list(items)
    if executor is None and (workers <= 1 or len(pairs) < PARALLEL_THRESHOLD):
        return _verify_chunk(alpha, pairs)
    slots = max(workers, 1) * 4  # a few chunks per worker evens out uneven cores
    size = max(1, -(-len(pairs) // slots))
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    if executor is not None:
        parts = executor.map(_verify_chunk, [alpha] * len(chunks), chunks)
        return [outcome for part in parts for outcome in part]
    # forkserver, not fork: the agent (and a test runner) has threads, and a forked child of a
    # threaded process can deadlock on a lock some thread held, or flush its parent's buffers.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        parts = pool.map(_verify_chunk, [alpha] * len(chunks), chunks)
        return [outcome for part in parts for outcome in part]


def score_vrf_candidates(
    alpha: bytes,
    candidates: Sequence[VrfCandidate],
    seed_height: int,
    *,
    workers: int = 1,
    executor: Executor | None = None,
) -> VrfScoring:
    """Scores (int of beta, big-endian) of the candidates that may take part, and why the others
    may not. Eligible: registered at a block below `seed_height` (so the key existed before the
    seed), one submission per node id, a public key no other node id uses (it would give the
    same output twice), and a proof that verifies."""
    node_counts = Counter(cand.node_id for cand in candidates)
    key_owners: dict[bytes, set[bytes]] = {}
    for cand in candidates:
        key_owners.setdefault(cand.public_key, set()).add(cand.node_id)
    excluded: list[Exclusion] = []
    eligible: list[VrfCandidate] = []
    for cand in candidates:
        if cand.registered_at_block >= seed_height:
            excluded.append(Exclusion(cand.node_id, "registered-too-late"))
        elif node_counts[cand.node_id] > 1:
            excluded.append(Exclusion(cand.node_id, "double-submission"))
        elif len(key_owners[cand.public_key]) > 1:
            excluded.append(Exclusion(cand.node_id, "shared-key"))
        else:
            eligible.append(cand)
    outcomes = verify_many(
        alpha,
        [(cand.public_key, cand.proof) for cand in eligible],
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
