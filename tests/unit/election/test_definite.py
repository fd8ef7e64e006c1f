"""The definite hash: the block hash, re-hashed with keccak-256 past every used one."""

from __future__ import annotations

import pytest

from agent.election.definite import definite_hash, keccak256
from agent.errors import ElectionError

BLOCK = bytes.fromhex("88e96d4537bea4d9c05d12549907b32561d3bf31f45aae734cdc119f13406cb6")


def test_keccak256_is_keccak_not_sha3() -> None:
    empty = "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"").hex() == empty


def test_unused_block_hash_is_its_own_definite_hash() -> None:
    assert definite_hash(BLOCK, set()) == BLOCK


def test_used_block_hash_is_rehashed_once() -> None:
    assert definite_hash(BLOCK, {BLOCK}) == keccak256(BLOCK)


def test_every_used_hash_in_the_chain_is_skipped() -> None:
    chain = [BLOCK]
    for _ in range(4):
        chain.append(keccak256(chain[-1]))
    used = set(chain[:4]) | {keccak256(b"unrelated")}
    assert definite_hash(BLOCK, used) == chain[4]


def test_used_hashes_elsewhere_do_not_matter() -> None:
    assert definite_hash(BLOCK, {keccak256(BLOCK)}) == BLOCK


def test_result_is_never_in_the_used_record() -> None:
    used: set[bytes] = set()
    for _ in range(20):  # the same block hash in 20 rounds yields 20 distinct definite hashes
        used.add(definite_hash(BLOCK, used))
    assert len(used) == 20


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


def test_a_record_that_contains_everything_raises_instead_of_hanging() -> None:
    with pytest.raises(ElectionError, match="re-hashes"):
        definite_hash(BLOCK, _Everything(), max_rehash=100)


@pytest.mark.parametrize("block", [b"", BLOCK[:31], BLOCK + b"\x00"])
def test_block_hash_must_be_32_bytes(block: bytes) -> None:
    with pytest.raises(ElectionError):
        definite_hash(block, set())
