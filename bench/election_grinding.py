"""The paper mode's weakness, measured: two colluding candidates that submit last grind their
signatures' nonces (each try is another valid low-S signature) until one of them is elected.
The same attack against vrf mode: every try is another valid proof, but with the same output.

Pure simulation with real signatures, proofs, hash merge and scoring (no chain): N nodes, k
seats, R rounds per setting; the fair share is P(a colluder among the k) with a random order.
Every row plays the same R rounds (same definite hashes and seeds): only the tries differ.

Run: python -m bench.record election-grinding -- python bench/election_grinding.py
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from math import comb, sqrt

from agent.attest import ecvrf
from agent.attest.selection import sign_selection
from agent.election.merge import Candidate, elect_top_k, hash_merge_scores
from agent.election.vrf_mode import vrf_alpha

NODES, SEATS, ROUNDS = 10, 2, 300
CHAIN = hashlib.sha256(b"grinding bench chain").digest()
HONEST = [b"honest-%d" % i for i in range(NODES - 2)]
COLLUDERS = (b"colluder-a", b"colluder-b")


def secret(node: bytes) -> bytes:
    return hashlib.sha256(b"grinding bench key " + node).digest()


def fair() -> float:
    return 1 - comb(NODES - 2, SEATS) / comb(NODES, SEATS)


def paper_round(rng: random.Random, r: int, tries: int) -> tuple[bool, int]:
    """(won, signatures made). The colluders see every honest signature (they submit last)."""
    definite = rng.randbytes(32)
    honest = [Candidate(n, sign_selection(secret(n), CHAIN, r, definite)) for n in HONEST]
    sigs: tuple[list[bytes], list[bytes]] = ([], [])
    for i in range(tries):
        entropy = None if i == 0 else i.to_bytes(32, "big")
        for c, mine in zip(COLLUDERS, sigs, strict=True):
            mine.append(sign_selection(secret(c), CHAIN, r, definite, nonce_entropy=entropy))
        # every new pair (i, j<=i) and (j<i, i)
        for a in range(i + 1):
            for b in range(i + 1):
                if a != i and b != i:
                    continue
                pair = [Candidate(COLLUDERS[0], sigs[0][a]), Candidate(COLLUDERS[1], sigs[1][b])]
                if set(elect_top_k(hash_merge_scores(honest + pair), SEATS)) & set(COLLUDERS):
                    return True, 2 * (i + 1)
    return False, 2 * tries


def vrf_round(rng: random.Random, r: int, tries: int) -> tuple[bool, int]:
    """(won, distinct outputs the colluders could choose from)."""
    alpha = vrf_alpha(CHAIN, r, rng.randbytes(32))
    nonces = random.Random(f"nonces-{r}-{tries}")  # the seeds stay those of every other row
    scores = {n: int.from_bytes(ecvrf.proof_to_hash(ecvrf.prove(secret(n), alpha))) for n in HONEST}
    outputs: list[set[int]] = []
    for c in COLLUDERS:
        seen = set()
        for i in range(tries):
            nonce = None if i == 0 else nonces.randrange(1, ecvrf.N)
            proof = ecvrf.prove(secret(c), alpha, nonce=nonce)
            beta = ecvrf.verify(ecvrf.public_key_of(secret(c)), proof, alpha)
            seen.add(int.from_bytes(beta))
        outputs.append(seen)
    won = False
    for a in outputs[0]:
        for b in outputs[1]:
            s = {**scores, COLLUDERS[0]: a, COLLUDERS[1]: b}
            won |= bool(set(elect_top_k(s, SEATS)) & set(COLLUDERS))
    return won, max(len(o) for o in outputs)


def main(argv: list[str]) -> None:
    rounds = int(argv[0]) if argv else ROUNDS
    share = fair()
    sd = sqrt(share * (1 - share) / rounds)
    print(
        f"{NODES} nodes, {SEATS} seats, 2 colluders submitting last, {rounds} rounds per row; "
        f"fair share {share:.3f} (± {sd:.3f} one standard deviation over {rounds} rounds)"
    )
    print(f"{'mode':<6} {'tries':>5} {'win rate':>9} {'/ fair':>7}  {'note':<48} {'s':>6}")
    for mode, fn in (("paper", paper_round), ("vrf", vrf_round)):
        for tries in (1, 4, 16, 64):
            rng = random.Random("rounds")  # the same definite hashes and seeds in every row
            t0 = time.perf_counter()
            outcomes = [fn(rng, r, tries) for r in range(rounds)]
            rate = sum(w for w, _ in outcomes) / rounds
            if mode == "paper":
                note = f"signatures made per round: mean {sum(x for _, x in outcomes) / rounds:.1f}"
            else:
                note = f"distinct outputs per colluder: at most {max(x for _, x in outcomes)}"
            seconds = time.perf_counter() - t0
            ratio = rate / share
            print(f"{mode:<6} {tries:>5} {rate:>9.3f} {ratio:>6.2f}x  {note:<48} {seconds:>6.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
