"""The paper's definite hash: a block hash, re-hashed with keccak-256 until it is not in the
record of definite hashes already used, so no two rounds ever sign the same value.
"""

from __future__ import annotations

from collections.abc import Container

from Crypto.Hash import keccak

from agent.errors import ElectionError

# The chain of re-hashes only needs as many steps as there are used hashes (plus one); the
# bound is there so a wrong `used` argument (one that contains everything) cannot hang a round.
MAX_REHASH = 1 << 20


def keccak256(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


def definite_hash(block_hash: bytes, used: Container[bytes], max_rehash: int = MAX_REHASH) -> bytes:
    """The block hash itself when unused, else the first unused of keccak(h), keccak(keccak(h)),
    and so on."""
    if len(block_hash) != 32:
        raise ElectionError(f"block hash is {len(block_hash)} bytes, expected 32")
    candidate = block_hash
    for _ in range(max_rehash):
        if candidate not in used:
            return candidate
        candidate = keccak256(candidate)
    raise ElectionError(
        f"no unused definite hash within {max_rehash} re-hashes of {block_hash.hex()}; "
        "check the record of used definite hashes"
    )
