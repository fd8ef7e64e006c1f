"""One round's result from what the election board logged: apply the discard rules, score,
take the top k, and give the result as canonical JSON that every honest agent publishes alike.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import coincurve

from agent.attest.selection import selection_digest
from agent.election.definite import keccak256
from agent.election.merge import (
    SelectionSubmission,
    elect_top_k,
    filter_submissions,
    hash_merge_scores,
)
from agent.election.standing import Standing
from agent.election.vrf_mode import VrfCandidate, score_vrf_candidates, vrf_alpha


@dataclass(frozen=True)
class BoardSubmission:
    """One `Submitted` log: the node is the transaction's sender (authenticated by the chain);
    payload is the signature (paper) or the proof (vrf), exactly as sent."""

    node: bytes  # 20-byte address
    definite_hash: bytes  # 32 bytes; zero in vrf mode
    payload: bytes
    block_number: int


@dataclass(frozen=True)
class RoundResult:
    round: int
    mode: str
    chain_id: int
    board: str
    boundary: int
    cutoff: int
    cutoff_block_hash: str
    input_hash: str  # definite hash (paper) or the chained seed (vrf)
    k: int
    elected: tuple[str, ...]
    scores: tuple[tuple[str, str], ...]  # (node, score as 64 hex digits), by node
    excluded: tuple[tuple[str, str], ...]  # (node, reason), sorted

    def to_json(self) -> bytes:
        """Canonical bytes: every agent that decided the same round publishes the same bytes."""
        doc: dict[str, Any] = {
            "round": self.round,
            "mode": self.mode,
            "chain_id": self.chain_id,
            "board": self.board,
            "boundary": self.boundary,
            "cutoff": self.cutoff,
            "cutoff_block_hash": self.cutoff_block_hash,
            "definite_hash" if self.mode == "paper" else "seed": self.input_hash,
            "k": self.k,
            "elected": list(self.elected),
            "scores": [{"node": n, "score": s} for n, s in self.scores],
            "excluded": [{"node": n, "reason": r} for n, r in self.excluded],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RoundResult:
        doc = json.loads(data)
        return cls(
            round=int(doc["round"]),
            mode=str(doc["mode"]),
            chain_id=int(doc["chain_id"]),
            board=str(doc["board"]),
            boundary=int(doc["boundary"]),
            cutoff=int(doc["cutoff"]),
            cutoff_block_hash=str(doc["cutoff_block_hash"]),
            input_hash=str(doc.get("definite_hash") or doc.get("seed")),
            k=int(doc["k"]),
            elected=tuple(doc["elected"]),
            scores=tuple((d["node"], d["score"]) for d in doc["scores"]),
            excluded=tuple((d["node"], d["reason"]) for d in doc["excluded"]),
        )

    def leader_output(self) -> bytes | None:
        """The VRF output (vrf mode: the score) of the first elected node, None if nobody."""
        if not self.elected:
            return None
        return bytes.fromhex(dict(self.scores)[self.elected[0]])

    @property
    def seed(self) -> bytes:
        return bytes.fromhex(self.input_hash[2:])


def _addr(node: bytes | None) -> str:
    return "0x" + node.hex() if node is not None else "unknown"


def chain_id_bytes(chain_id: int) -> bytes:
    return chain_id.to_bytes(32, "big")


@dataclass(frozen=True)
class RoundContext:
    round: int
    chain_id: int
    board: str
    boundary: int
    cutoff: int
    cutoff_block_hash: str
    k: int


def recover_public_key(node: bytes, digest: bytes, signature: bytes) -> bytes | None:
    """The 33-byte key of `node` (20-byte address) that made the 64-byte `signature` over
    `digest`, or None: paper mode needs no key registration, the sender's address (authenticated
    by the chain) names its key."""
    if len(signature) != 64:
        return None
    for recid in (0, 1):
        try:
            pub = coincurve.PublicKey.from_signature_and_message(
                signature + bytes((recid,)), digest, hasher=None
            )
        except ValueError:
            continue
        if keccak256(pub.format(compressed=False)[1:])[12:] == node:
            return pub.format()
    return None


# Not a key of any node: a signature the sender's address does not recover from fails under it.
_NOBODY = coincurve.PrivateKey(b"\x01" * 32).public_key.format()


def _standing_reasons(
    submissions: Sequence[BoardSubmission], standing: Mapping[bytes, Standing]
) -> tuple[list[BoardSubmission], list[tuple[str, str]]]:
    """The submissions of nodes that may stand, and (node, reason) for the others (once each)."""
    kept: list[BoardSubmission] = []
    excluded: dict[bytes, str] = {}
    for s in submissions:
        st = standing.get(s.node)
        if st is None:
            excluded[s.node] = "not-a-masternode"
        elif st.reason is not None:
            excluded[s.node] = st.reason
        else:
            kept.append(s)
    return kept, [(_addr(n), r) for n, r in excluded.items()]


def tally_paper(
    ctx: RoundContext,
    definite_hash: bytes,
    submissions: Sequence[BoardSubmission],
    standing: Mapping[bytes, Standing],
) -> RoundResult:
    """Paper mode: leave out nodes that were not active masternodes at the cutoff; drop illegal
    submissions (wrong definite hash, bad or high-S signature, a submission outside the window)
    and every submission of a node that sent more than one; score the rest by hash merge; elect
    the top k."""
    kept, excluded = _standing_reasons(submissions, standing)
    digest = selection_digest(chain_id_bytes(ctx.chain_id), ctx.round, definite_hash)
    keys = {s.node: recover_public_key(s.node, digest, s.payload) or _NOBODY for s in kept}
    subs = [
        SelectionSubmission(
            s.node,
            ctx.round if ctx.boundary < s.block_number <= ctx.cutoff else -1,  # wrong-round
            s.definite_hash,
            s.payload,
        )
        for s in kept
    ]
    filtered = filter_submissions(
        subs,
        chain_id=chain_id_bytes(ctx.chain_id),
        round=ctx.round,
        definite_hash=definite_hash,
        public_keys=keys,
    )
    scores = hash_merge_scores(filtered.candidates)
    excluded += [(_addr(r.node_id), r.reason) for r in filtered.rejected]
    return _result(ctx, "paper", definite_hash, scores, excluded)


def tally_vrf(
    ctx: RoundContext,
    seed: bytes,
    submissions: Sequence[BoardSubmission],
    standing: Mapping[bytes, Standing],
    *,
    workers: int = 1,
    executor: Executor | None = None,
) -> RoundResult:
    """Vrf mode: score = each node's own verified ECVRF output over its alpha for the round's
    chained seed; nodes that may not stand (standing.py), double submitters and bad proofs are
    left out."""
    kept, excluded = _standing_reasons(submissions, standing)
    candidates: list[VrfCandidate] = []
    per_node = Counter(s.node for s in kept)
    chain = chain_id_bytes(ctx.chain_id)
    for s in kept:
        key = standing[s.node].vrf_key
        assert key is not None
        if per_node[s.node] == 1 and not ctx.boundary < s.block_number <= ctx.cutoff:
            # (several submissions: all of them go to the scoring, which drops them all)
            excluded.append((_addr(s.node), "outside-window"))
        else:
            alpha = vrf_alpha(chain, ctx.round, seed, s.node)
            candidates.append(VrfCandidate(s.node, key, s.payload, alpha))
    scoring = score_vrf_candidates(candidates, workers=workers, executor=executor)
    excluded += [(_addr(e.node_id), e.reason) for e in scoring.excluded]
    return _result(ctx, "vrf", seed, scoring.scores, excluded)


def _result(
    ctx: RoundContext,
    mode: str,
    input_hash: bytes,
    scores: Mapping[bytes, int],
    excluded: list[tuple[str, str]],
) -> RoundResult:
    return RoundResult(
        round=ctx.round,
        mode=mode,
        chain_id=ctx.chain_id,
        board=ctx.board.lower(),
        boundary=ctx.boundary,
        cutoff=ctx.cutoff,
        cutoff_block_hash=ctx.cutoff_block_hash,
        input_hash="0x" + input_hash.hex(),
        k=ctx.k,
        elected=tuple(_addr(n) for n in elect_top_k(scores, ctx.k)),
        scores=tuple((_addr(n), f"{s:064x}") for n, s in sorted(scores.items())),
        excluded=tuple(sorted(excluded)),
    )
