"""Election benchmark: verification + scoring of N candidates in paper mode (ECDSA + hash merge)
and hardened mode (ECVRF + score), against the naive O(n^2) merge and one core, same run.

Run: .venv/bin/python bench/election_bench.py [N ...]   (default 1000 10000)
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from coincurve import PrivateKey

from agent.attest import ecvrf
from agent.attest.selection import sign_selection
from agent.election.definite import keccak256
from agent.election.merge import (
    SelectionSubmission,
    elect_top_k,
    filter_submissions,
    hash_merge_scores,
    naive_hash_merge_scores,
)
from agent.election.vrf_mode import VrfCandidate, score_vrf_candidates, vrf_alpha

CHAIN = hashlib.sha256(b"bench chain").digest()
ROUND = 1
DEFINITE = hashlib.sha256(b"bench definite").digest()
SEED = hashlib.sha256(b"bench seed").digest()
SEATS = 21
NAIVE_FULL_LIMIT = 10_000  # above this the naive merge is estimated from a sample of rows
NAIVE_SAMPLE_ROWS = 400

T = TypeVar("T")


def _secret(i: int) -> bytes:
    return hashlib.sha256(b"bench node %d" % i).digest()


def _node(i: int) -> bytes:
    return i.to_bytes(20, "big")


def _paper_setup(indices: range) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for i in indices:
        secret = _secret(i)
        public_key = PrivateKey(secret).public_key.format()
        out.append((_node(i), public_key, sign_selection(secret, CHAIN, ROUND, DEFINITE)))
    return out


def _vrf_setup(indices: range) -> list[VrfCandidate]:
    out = []
    for i in indices:
        secret = _secret(i)
        alpha = vrf_alpha(CHAIN, ROUND, SEED, _node(i))
        proof = ecvrf.prove(secret, alpha)
        out.append(VrfCandidate(_node(i), ecvrf.public_key_of(secret), proof, alpha))
    return out


def _split(n: int, parts: int) -> list[range]:
    step = -(-n // parts)
    return [range(i, min(i + step, n)) for i in range(0, n, step)]


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _naive_estimate(n: int, signatures: list[bytes]) -> float:
    """Seconds the naive merge would take: hashing all signatures (measured) plus n rows of the
    O(n) inner XOR loop, timed on NAIVE_SAMPLE_ROWS rows written exactly like the naive one."""
    start = time.perf_counter()
    hashes = [int.from_bytes(keccak256(sig), "big") for sig in signatures]
    hashing = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(NAIVE_SAMPLE_ROWS):
        score = 0
        for j, digest in enumerate(hashes):
            if j != i:
                score ^= digest
    per_row = (time.perf_counter() - start) / NAIVE_SAMPLE_ROWS
    return hashing + per_row * n


def bench(n: int, pool: ProcessPoolExecutor, workers: int) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    ranges = _split(n, workers * 4)
    paper = [item for part in pool.map(_paper_setup, ranges) for item in part]
    vrf = [cand for part in pool.map(_vrf_setup, ranges) for cand in part]
    keys = {node: public_key for node, public_key, _ in paper}
    subs = [SelectionSubmission(node, ROUND, DEFINITE, sig) for node, _, sig in paper]

    def paper_round() -> list[bytes]:
        result = filter_submissions(
            subs, chain_id=CHAIN, round=ROUND, definite_hash=DEFINITE, public_keys=keys
        )
        assert len(result.candidates) == n
        return elect_top_k(hash_merge_scores(result.candidates), SEATS)

    paper_s, _ = _timed(paper_round)
    filtered = filter_submissions(
        subs, chain_id=CHAIN, round=ROUND, definite_hash=DEFINITE, public_keys=keys
    ).candidates
    merge_s, fast_scores = _timed(lambda: hash_merge_scores(filtered))
    if n <= NAIVE_FULL_LIMIT:
        naive_s, naive_scores = _timed(lambda: naive_hash_merge_scores(filtered))
        assert naive_scores == fast_scores
        estimate = _naive_estimate(n, [cand.signature for cand in filtered])
        naive_note = f"measured (sample estimate {estimate:.2f} s)"
    else:
        naive_s = _naive_estimate(n, [cand.signature for cand in filtered])
        naive_note = f"ESTIMATED from {NAIVE_SAMPLE_ROWS} rows"

    def vrf_round(executor: ProcessPoolExecutor | None) -> list[bytes]:
        scoring = score_vrf_candidates(vrf, executor=executor)
        assert len(scoring.scores) == n and not scoring.excluded
        return elect_top_k(scoring.scores, SEATS)

    one_core_s, winners_1 = _timed(lambda: vrf_round(None))
    warm_s, winners_2 = _timed(lambda: vrf_round(pool))
    assert winners_1 == winners_2

    def cold() -> list[bytes]:
        with ProcessPoolExecutor(max_workers=workers) as fresh:
            return vrf_round(fresh)

    cold_s, _ = _timed(cold)

    rows.append((f"paper: ECDSA verify + merge + top-{SEATS}, 1 core", paper_s, "baseline"))
    rows.append(
        ("paper: hash merge O(n) alone", merge_s, f"naive / this = {naive_s / merge_s:.0f}x")
    )
    rows.append(("paper: naive merge O(n^2) alone", naive_s, naive_note))
    rows.append(
        (
            f"vrf: ECVRF verify + score + top-{SEATS}, 1 core",
            one_core_s,
            f"{one_core_s / paper_s:.1f}x paper",
        )
    )
    rows.append(
        (
            f"vrf: same, {workers} processes (warm pool)",
            warm_s,
            f"speed-up {one_core_s / warm_s:.2f}x over 1 core",
        )
    )
    rows.append((f"vrf: same, {workers} processes (pool started inside)", cold_s, "includes fork"))
    return rows


def main(argv: list[str]) -> None:
    sizes = [int(arg) for arg in argv] or [1_000, 10_000]
    workers = os.cpu_count() or 1
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"election bench: {workers} cores, python {sys.version.split()[0]}, load {load}")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n in sizes:
            print(f"\nN = {n:,}")
            print(f"{'what':<52} {'seconds':>9} {'µs/cand':>9}  compared")
            for what, seconds, note in bench(n, pool, workers):
                print(f"{what:<52} {seconds:>9.3f} {seconds / n * 1e6:>9.1f}  {note}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load} (the machine is shared)")


if __name__ == "__main__":
    main(sys.argv[1:])
