"""Paper-mode selection signatures: tagged digest, compact low-S ECDSA, and what must not verify."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from agent.attest.selection import (
    SELECTION_TAG,
    N,
    selection_digest,
    sign_selection,
    verify_selection,
)
from agent.errors import ElectionError

SECRET = hashlib.sha256(b"edgence test selection key").digest()
CHAIN = hashlib.sha256(b"chain").digest()
ROUND = 42
DEFINITE = hashlib.sha256(b"definite").digest()


@pytest.fixture(scope="module")
def public_key() -> bytes:
    from coincurve import PrivateKey

    return PrivateKey(SECRET).public_key.format()


def test_digest_is_the_bip340_style_tagged_hash() -> None:
    tag = hashlib.sha256(SELECTION_TAG).digest()
    message = CHAIN + ROUND.to_bytes(8, "big") + DEFINITE
    assert SELECTION_TAG == b"edgence/selection/v1"
    assert selection_digest(CHAIN, ROUND, DEFINITE) == hashlib.sha256(tag + tag + message).digest()


def test_signature_roundtrip(public_key: bytes) -> None:
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert len(signature) == 64
    assert verify_selection(public_key, CHAIN, ROUND, DEFINITE, signature)


def test_signature_is_deterministic_and_low_s() -> None:
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert signature == sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert int.from_bytes(signature[32:], "big") <= N // 2


def test_high_s_copy_of_a_valid_signature_is_rejected(public_key: bytes) -> None:
    # (r, n - s) is the other valid ECDSA signature anyone can derive from (r, s) without the
    # key; accepting it would let a third party make a node look like a double submitter.
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    high = signature[:32] + (N - int.from_bytes(signature[32:], "big")).to_bytes(32, "big")
    assert high != signature
    assert verify_selection(public_key, CHAIN, ROUND, DEFINITE, signature)
    assert not verify_selection(public_key, CHAIN, ROUND, DEFINITE, high)


@pytest.mark.parametrize(
    ("chain", "round_", "definite"),
    [
        (CHAIN, ROUND + 1, DEFINITE),
        (CHAIN, ROUND - 1, DEFINITE),
        (CHAIN, ROUND, hashlib.sha256(b"other").digest()),
        (hashlib.sha256(b"other chain").digest(), ROUND, DEFINITE),
    ],
)
def test_signature_for_another_round_hash_or_chain_is_rejected(
    public_key: bytes, chain: bytes, round_: int, definite: bytes
) -> None:
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert not verify_selection(public_key, chain, round_, definite, signature)


def test_signature_under_another_key_is_rejected() -> None:
    from coincurve import PrivateKey

    other = PrivateKey(hashlib.sha256(b"other key").digest()).public_key.format()
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert not verify_selection(other, CHAIN, ROUND, DEFINITE, signature)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda sig: sig[:63],
        lambda sig: sig + b"\x00",
        lambda sig: bytes(32) + sig[32:],  # r = 0
        lambda sig: sig[:32] + bytes(32),  # s = 0
        lambda sig: N.to_bytes(32, "big") + sig[32:],  # r = n
        lambda sig: sig[:31] + bytes((sig[31] ^ 1,)) + sig[32:],
    ],
)
def test_malformed_signature_is_rejected(
    public_key: bytes, mangle: Callable[[bytes], bytes]
) -> None:
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert not verify_selection(public_key, CHAIN, ROUND, DEFINITE, mangle(signature))


@pytest.mark.parametrize("bad_key", [b"", b"\x02" + b"\xff" * 32, b"\x05" + b"\x01" * 32])
def test_invalid_public_key_does_not_verify(bad_key: bytes) -> None:
    signature = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    assert not verify_selection(bad_key, CHAIN, ROUND, DEFINITE, signature)


def test_nonce_entropy_gives_other_valid_signatures(public_key: bytes) -> None:
    plain = sign_selection(SECRET, CHAIN, ROUND, DEFINITE)
    variants = {
        sign_selection(SECRET, CHAIN, ROUND, DEFINITE, nonce_entropy=i.to_bytes(32, "big"))
        for i in range(8)
    }
    assert len(variants) == 8 and plain not in variants
    assert all(verify_selection(public_key, CHAIN, ROUND, DEFINITE, sig) for sig in variants)


@pytest.mark.parametrize(
    ("chain", "round_", "definite"),
    [
        (CHAIN[:31], ROUND, DEFINITE),
        (CHAIN, -1, DEFINITE),
        (CHAIN, 2**64, DEFINITE),
        (CHAIN, ROUND, DEFINITE + b"\x00"),
    ],
)
def test_malformed_round_parameters_raise(chain: bytes, round_: int, definite: bytes) -> None:
    with pytest.raises(ElectionError):
        selection_digest(chain, round_, definite)


def test_invalid_secret_raises() -> None:
    with pytest.raises(ElectionError):
        sign_selection(bytes(32), CHAIN, ROUND, DEFINITE)
    with pytest.raises(ElectionError):
        sign_selection(SECRET, CHAIN, ROUND, DEFINITE, nonce_entropy=b"short")
