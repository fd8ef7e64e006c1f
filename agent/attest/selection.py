"""Paper-mode node-selection signature: ECDSA secp256k1 over a BIP-340-style tagged hash of
(chain id, round, definite hash); 64-byte compact r‖s, low-S only.
"""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey, PublicKey

# coincurve's `custom_nonce` is typed as a pair of cffi objects; its cffi module has no stubs.
from coincurve._libsecp256k1 import ffi  # type: ignore[import-not-found]

from agent.errors import ElectionError

SELECTION_TAG = b"edgence/selection/v1"
_TAG_HASH = hashlib.sha256(SELECTION_TAG).digest()
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = N // 2
SIGNATURE_LEN = 64
UINT64_MAX = 2**64 - 1


def tagged_hash(tag_hash: bytes, message: bytes) -> bytes:
    """SHA256(SHA256(tag) ‖ SHA256(tag) ‖ message), with SHA256(tag) given."""
    return hashlib.sha256(tag_hash + tag_hash + message).digest()


def selection_digest(chain_id: bytes, round: int, definite_hash: bytes) -> bytes:
    """The 32 bytes a candidate signs: tagged hash of chain id (32) ‖ round (8, BE) ‖ definite
    hash (32). The chain id and round keep a signature from being replayed elsewhere."""
    if len(chain_id) != 32:
        raise ElectionError(f"chain id is {len(chain_id)} bytes, expected 32")
    if not 0 <= round <= UINT64_MAX:
        raise ElectionError(f"round {round} does not fit in 8 bytes")
    if len(definite_hash) != 32:
        raise ElectionError(f"definite hash is {len(definite_hash)} bytes, expected 32")
    return tagged_hash(_TAG_HASH, chain_id + round.to_bytes(8, "big") + definite_hash)


def sign_selection(
    secret: bytes,
    chain_id: bytes,
    round: int,
    definite_hash: bytes,
    *,
    nonce_entropy: bytes | None = None,
) -> bytes:
    """The 64-byte compact low-S signature r‖s of the selection digest.

    `nonce_entropy` (32 bytes) is RFC 6979's additional data (section 3.6), passed to
    libsecp256k1's default nonce function through coincurve's `custom_nonce=(NULL, ndata)`.
    Each value gives another, equally valid signature: this is exactly the freedom a grinding
    attacker has, and it exists here only for the grinding demonstration. Honest nodes leave it
    None (plain deterministic RFC 6979).
    """
    digest = selection_digest(chain_id, round, definite_hash)
    try:
        key = PrivateKey(secret)
    except ValueError as exc:
        raise ElectionError(f"selection key is not a valid secp256k1 secret: {exc}") from exc
    if nonce_entropy is None:
        signature = key.sign_recoverable(digest, hasher=None)
    else:
        if len(nonce_entropy) != 32:
            raise ElectionError(f"nonce entropy is {len(nonce_entropy)} bytes, expected 32")
        ndata = ffi.new("unsigned char[32]", nonce_entropy)
        signature = key.sign_recoverable(digest, hasher=None, custom_nonce=(ffi.NULL, ndata))
    # sign_recoverable gives r ‖ s ‖ recid, and libsecp256k1 always signs with low S.
    return signature[:SIGNATURE_LEN]


def _der_integer(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # minimal, sign bit clear
    return b"\x02" + bytes((len(body),)) + body


def verify_selection(
    public_key: bytes, chain_id: bytes, round: int, definite_hash: bytes, signature: bytes
) -> bool:
    """True when `signature` (64-byte r‖s) is the holder of `public_key` (33-byte compressed)
    signing this round's selection digest. High-S signatures are rejected: otherwise anyone
    could turn a node's signature into a second valid one (s -> n - s) and get the node dropped
    as a double submitter. Raises ElectionError only for a malformed chain id, round or
    definite hash."""
    digest = selection_digest(chain_id, round, definite_hash)
    if len(signature) != SIGNATURE_LEN or len(public_key) != 33 or public_key[0] not in (2, 3):
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (0 < r < N and 0 < s <= HALF_N):
        return False
    try:
        key = PublicKey(public_key)
    except ValueError:
        return False
    der_body = _der_integer(r) + _der_integer(s)
    der = b"\x30" + bytes((len(der_body),)) + der_body
    return key.verify(der, digest, hasher=None)
