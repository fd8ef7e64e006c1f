"""Grinding the election, measured: every attacker against every mode.

Attackers (each a candidate; the others are honest):
- colluders: two late submitters who see every honest submission, then try k signatures
  (paper: each another valid low-S signature) or k proofs (vrf: each another valid proof) and
  choose whether to submit at all (withholding);
- lone: one late submitter doing the same alone;
- producer: one candidate that also produces blocks and tries k candidate blocks. Paper: its
  definite hash comes from the boundary block, but the honest signatures over a candidate
  hash are unknown when it must choose, so the lever it has is the last block of the window,
  where it sees the honest signatures and puts one of k signatures of its own: the lone late
  submitter's attack. Vrf (block-hash seed): it picks, of k candidate boundary blocks, the one
  whose seed gives itself the highest VRF output. Hardened: blocks do not enter the seed, so it
  is left with withholding its own proof.
Modes: paper (definite hash, signatures, hash merge), vrf (today's: seed = the boundary block's
hash), hardened (seed chained through the previous round's leader output, agent/election).

Pure simulation with real signatures, ECVRF proofs, hash merge and scoring (no chain): NODES
nodes, SEATS seats, ROUNDS rounds per row. Win = an attacker among the SEATS elected; the fair
share is its probability with a random order, and the band is fair ± 2 standard deviations of
a rate over ROUNDS rounds. In hardened mode the rounds form one seed chain (the attackers'
withholding steers it as far as it can): attackers withhold when that gives them a better
"win now + estimated chance next round" (their own outputs under each possible next seed,
honest ones unknown).

Run: python -m bench.record election-grinding -- python bench/election_grinding.py [ROUNDS]
"""

from __future__ import annotations

import hashlib
import itertools
import random
import sys
import time
from collections.abc import Callable, Sequence
from math import comb, sqrt

from agent.attest import ecvrf
from agent.attest.selection import sign_selection
from agent.election.merge import Candidate, elect_top_k, hash_merge_scores
from agent.election.vrf_mode import next_seed, vrf_alpha

NODES, SEATS, ROUNDS = 10, 2, 500
TRIES = (1, 4, 16, 64)
CHAIN = hashlib.sha256(b"grinding bench chain").digest()


def node_id(name: bytes) -> bytes:
    return hashlib.sha256(b"grinding bench node " + name).digest()[:20]


COLLUDERS = (node_id(b"colluder-a"), node_id(b"colluder-b"))
LONE = (COLLUDERS[0],)


def honest_for(attackers: Sequence[bytes]) -> list[bytes]:
    return [node_id(b"honest-%d" % i) for i in range(NODES - len(attackers))]


def secret(node: bytes) -> bytes:
    return hashlib.sha256(b"grinding bench key " + node).digest()


def fair(attackers: int) -> float:
    return 1 - comb(NODES - attackers, SEATS) / comb(NODES, SEATS)


def won(scores: dict[bytes, int], attackers: Sequence[bytes]) -> bool:
    return bool(set(elect_top_k(scores, SEATS)) & set(attackers))


def beta(node: bytes, r: int, seed: bytes, nonce: int | None = None) -> int:
    proof = ecvrf.prove(secret(node), vrf_alpha(CHAIN, r, seed, node), nonce=nonce)
    return int.from_bytes(ecvrf.proof_to_hash(proof), "big")


def distinct_outputs(node: bytes, r: int, seed: bytes, tries: int, rng: random.Random) -> int:
    """How many different outputs `tries` valid proofs (other nonces) give: always 1."""
    return len(
        {beta(node, r, seed, None if i == 0 else rng.randrange(1, ecvrf.N)) for i in range(tries)}
    )


# -- paper -------------------------------------------------------------------------------------


def paper(rng: random.Random, r: int, tries: int, attackers: Sequence[bytes]) -> tuple[bool, str]:
    """Late submitters: they see every honest signature, then try signatures (each another
    RFC 6979 additional-data value); with two, every new pair of tries is another draw."""
    definite = rng.randbytes(32)
    honest: list[Candidate] = [
        Candidate(n, sign_selection(secret(n), CHAIN, r, definite)) for n in honest_for(attackers)
    ]
    sigs: list[list[bytes]] = [[] for _ in attackers]
    for i in range(tries):
        entropy = None if i == 0 else i.to_bytes(32, "big")
        for a, mine in zip(attackers, sigs, strict=True):
            mine.append(sign_selection(secret(a), CHAIN, r, definite, nonce_entropy=entropy))
        for combo in itertools.product(range(i + 1), repeat=len(attackers)):
            if i not in combo:
                continue  # tried already
            tried = [
                Candidate(a, sigs[j][c])
                for j, (a, c) in enumerate(zip(attackers, combo, strict=True))
            ]
            if won(hash_merge_scores(honest + tried), attackers):
                return True, f"signatures made: {len(attackers) * (i + 1)}"
    return False, f"signatures made: {len(attackers) * tries}"


# -- vrf: the seed is the boundary block's hash ------------------------------------------------


def vrf(rng: random.Random, r: int, tries: int, attackers: Sequence[bytes]) -> tuple[bool, str]:
    """Late submitters: k proofs each (all one output) and the choice to withhold, which can
    only lose them seats here (the seed does not depend on the round's result)."""
    seed = rng.randbytes(32)
    nonces = random.Random(f"nonces-{r}-{tries}")
    scores = {n: beta(n, r, seed) for n in honest_for(attackers)}
    outs = max(distinct_outputs(a, r, seed, tries, nonces) for a in attackers)
    scores.update({a: beta(a, r, seed) for a in attackers})
    return won(scores, attackers), f"distinct outputs: {outs}"


def vrf_producer(
    rng: random.Random, r: int, tries: int, attackers: Sequence[bytes]
) -> tuple[bool, str]:
    """k candidate boundary blocks: the producer keeps the seed that gives it the highest own
    output (it cannot compute the honest outputs; it does not need to)."""
    seeds = [rng.randbytes(32) for _ in range(tries)]
    a = attackers[0]
    best = max(seeds, key=lambda s: beta(a, r, s))
    scores = {n: beta(n, r, best) for n in honest_for(attackers)}
    scores[a] = beta(a, r, best)
    return won(scores, attackers), f"candidate seeds: {tries}"


# -- hardened: chained seed ---------------------------------------------------------------------


def p_next(own: Sequence[int], honest: int) -> float:
    """P(an attacker among the seats) given the attackers' own outputs and `honest` unknown
    uniform outputs: the best attacker output u must have fewer than SEATS honest above it."""
    u = max(own) / 2**256
    return sum(comb(honest, j) * (1 - u) ** j * u ** (honest - j) for j in range(SEATS))


class Hardened:
    """One seed chain over the rounds of a row; `round()` plays the next round."""

    def __init__(self, attackers: Sequence[bytes]) -> None:
        self.attackers = attackers
        self.honest = honest_for(attackers)
        self.seed = hashlib.sha256(b"grinding bench first seed").digest()
        self.withheld = 0

    def round(self, r: int, tries: int, nonces: random.Random) -> tuple[bool, str]:
        seed = self.seed
        honest = {n: beta(n, r, seed) for n in self.honest}
        own = {a: beta(a, r, seed) for a in self.attackers}
        outs = max(distinct_outputs(a, r, seed, tries, nonces) for a in self.attackers)
        best: tuple[float, int, bool, bytes] | None = None
        # Every subset of the attackers may submit; the largest first (ties: honest behaviour).
        for size in range(len(self.attackers), -1, -1):
            for subset in itertools.combinations(self.attackers, size):
                scores = {**honest, **{a: own[a] for a in subset}}
                win = won(scores, self.attackers)
                top = elect_top_k(scores, 1)
                nxt = next_seed(seed, scores[top[0]].to_bytes(32, "big") if top else None)
                later = p_next([beta(a, r + 1, nxt) for a in self.attackers], len(self.honest))
                value = win + later
                if best is None or value > best[0]:
                    best = (value, size, win, nxt)
        assert best is not None
        _value, size, win, self.seed = best
        self.withheld += size < len(self.attackers)
        return win, f"distinct outputs: {outs}; withheld in {self.withheld} rounds"


# -- the table ---------------------------------------------------------------------------------

Play = Callable[[random.Random, int, int, Sequence[bytes]], tuple[bool, str]]


def row(mode: str, attacker: str, tries: int, rounds: int) -> tuple[float, str]:
    attackers = COLLUDERS if attacker == "colluders" else LONE
    rng = random.Random("rounds")  # the same definite hashes and seeds in every row
    results: list[tuple[bool, str]]
    if mode == "hardened":
        chain = Hardened(attackers)
        nonces = random.Random(f"nonces-{tries}")
        results = [chain.round(r, tries, nonces) for r in range(rounds)]
    else:
        play: Play = {
            ("paper", "colluders"): paper,
            ("paper", "lone"): paper,
            ("paper", "producer"): paper,
            ("vrf", "colluders"): vrf,
            ("vrf", "lone"): vrf,
            ("vrf", "producer"): vrf_producer,
        }[(mode, attacker)]
        results = [play(rng, r, tries, attackers) for r in range(rounds)]
    rate = sum(w for w, _ in results) / rounds
    return rate, results[-1][1]


def main(argv: list[str]) -> None:
    rounds = int(argv[0]) if argv else ROUNDS
    print(
        f"{NODES} nodes, {SEATS} seats, {rounds} rounds per row; win = an attacker elected; "
        "band = fair share ± 2 standard deviations over the rows' rounds"
    )
    print(
        f"{'attacker':<10} {'mode':<9} {'k':>3} {'win rate':>8} {'fair':>6} {'band':>13} "
        f"{'in band':>7}  {'/ fair':>6}  {'last round':<44} {'s':>5}"
    )
    for attacker in ("colluders", "lone", "producer"):
        share = fair(2 if attacker == "colluders" else 1)
        sd = sqrt(share * (1 - share) / rounds)
        lo, hi = share - 2 * sd, share + 2 * sd
        for mode in ("paper", "vrf", "hardened"):
            for tries in TRIES:
                t0 = time.perf_counter()
                rate, note = row(mode, attacker, tries, rounds)
                seconds = time.perf_counter() - t0
                inside = "yes" if lo <= rate <= hi else ("below" if rate < lo else "NO")
                print(
                    f"{attacker:<10} {mode:<9} {tries:>3} {rate:>8.3f} {share:>6.3f} "
                    f"{lo:>6.3f}-{hi:<6.3f} {inside:>7}  {rate / share:>5.2f}x  {note:<44} "
                    f"{seconds:>5.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main(sys.argv[1:])
