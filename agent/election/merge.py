"""Paper-mode election: filter the node-selection submissions, score them by hash merge (each
score is the XOR of the hashes of all OTHER candidates' signatures) and take the top k.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from agent.attest.selection import verify_selection
from agent.election.definite import keccak256
from agent.errors import ElectionError


class Candidate(NamedTuple):
    """A node that sent one legal selection transaction, and that transaction's signature."""

    node_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SelectionSubmission:
    """A node-selection transaction as read from the chain; None marks a missing field.

    `node_id` must be the AUTHENTICATED sender (the transaction's signer as recorded by the
    election board), never a value the sender wrote: a node is dropped for every submission
    counted under its id, so an unauthenticated id would let anyone evict anyone.
    """

    node_id: bytes | None
    round: int | None
    definite_hash: bytes | None
    signature: bytes | None


@dataclass(frozen=True)
class Rejection:
    """A submission left out of the merge; `reason` is a short stable label:
    missing-field, wrong-round, wrong-definite-hash, unregistered, bad-signature,
    double-submission."""

    node_id: bytes | None
    reason: str


@dataclass(frozen=True)
class FilterResult:
    candidates: tuple[Candidate, ...]  # sorted by node id
    rejected: tuple[Rejection, ...]


def filter_submissions(
    submissions: Iterable[SelectionSubmission],
    *,
    chain_id: bytes,
    round: int,
    definite_hash: bytes,
    public_keys: Mapping[bytes, bytes],
) -> FilterResult:
    """Keep the nodes that sent exactly one legal submission for this round.

    Illegal submissions (a missing field, another round or definite hash, a node id without a
    registered key in `public_keys`, a signature that does not verify) are dropped, and so is
    EVERY submission of a node that sent more than one, legal or not (the paper: such a node is
    malicious). Two byte-identical submissions also count as two.
    """
    subs = list(submissions)
    counts = Counter(sub.node_id for sub in subs if sub.node_id is not None)
    accepted: list[Candidate] = []
    rejected: list[Rejection] = []
    for sub in subs:
        node_id = sub.node_id
        if (
            node_id is None
            or sub.round is None
            or sub.definite_hash is None
            or sub.signature is None
        ):
            rejected.append(Rejection(node_id, "missing-field"))
        elif counts[node_id] > 1:
            rejected.append(Rejection(node_id, "double-submission"))
        elif sub.round != round:
            rejected.append(Rejection(node_id, "wrong-round"))
        elif sub.definite_hash != definite_hash:
            rejected.append(Rejection(node_id, "wrong-definite-hash"))
        elif node_id not in public_keys:
            rejected.append(Rejection(node_id, "unregistered"))
        elif not verify_selection(
            public_keys[node_id], chain_id, round, definite_hash, sub.signature
        ):
            rejected.append(Rejection(node_id, "bad-signature"))
        else:
            accepted.append(Candidate(node_id, sub.signature))
    accepted.sort(key=lambda cand: cand.node_id)
    return FilterResult(tuple(accepted), tuple(rejected))


def _signature_hashes(candidates: Iterable[Candidate]) -> list[tuple[bytes, int]]:
    hashes: list[tuple[bytes, int]] = []
    seen: set[bytes] = set()
    for node_id, signature in candidates:
        if node_id in seen:
            raise ElectionError(f"node {node_id.hex()} is a candidate twice; filter first")
        seen.add(node_id)
        hashes.append((node_id, int.from_bytes(keccak256(signature), "big")))
    return hashes


def hash_merge_scores(candidates: Iterable[Candidate]) -> dict[bytes, int]:
    """score_i = XOR of keccak256(sig_j) over all j != i, in O(n) as X xor H(sig_i) where X is
    the XOR of all hashes (x xor x = 0). A lone candidate scores 0, the empty XOR."""
    hashes = _signature_hashes(candidates)
    total = 0
    for _node_id, digest in hashes:
        total ^= digest
    return {node_id: total ^ digest for node_id, digest in hashes}


def naive_hash_merge_scores(candidates: Iterable[Candidate]) -> dict[bytes, int]:
    """The paper's definition taken literally, O(n^2); the reference for hash_merge_scores."""
    hashes = _signature_hashes(candidates)
    scores: dict[bytes, int] = {}
    for i, (node_id, _digest) in enumerate(hashes):
        score = 0
        for j, (_other, other_digest) in enumerate(hashes):
            if j != i:
                score ^= other_digest
        scores[node_id] = score
    return scores


def elect_top_k(scores: Mapping[bytes, int], k: int) -> list[bytes]:
    """The node ids of the k highest scores, best first; equal scores go to the lower node id
    (bytes order). Fewer than k candidates: all of them, in that order; none: []."""
    if k < 0:
        raise ElectionError(f"k must not be negative, got {k}")
    best: Sequence[tuple[int, bytes]] = heapq.nsmallest(
        k, ((-score, node_id) for node_id, score in scores.items())
    )
    return [node_id for _neg_score, node_id in best]
