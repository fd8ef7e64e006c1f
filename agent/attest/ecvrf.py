"""ECVRF-SECP256K1-SHA256-TAI in RFC 9381 form (suite byte 0xFE): prove, verify, proof_to_hash.

Pure code on coincurve's point arithmetic; the RFC 6979 nonce is built from hmac/hashlib.
"""

from __future__ import annotations

import hashlib
import hmac

from coincurve import PublicKey

from agent.errors import ElectionError

SUITE = b"\xfe"
# Order of the secp256k1 group (cofactor 1, so no cofactor clearing anywhere below).
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
POINT_LEN = 33
CHALLENGE_LEN = 16
SCALAR_LEN = 32
PROOF_LEN = POINT_LEN + CHALLENGE_LEN + SCALAR_LEN  # 81
BETA_LEN = 32

_HASH_TO_CURVE = b"\x01"
_CHALLENGE = b"\x02"
_PROOF_TO_HASH = b"\x03"
_BACK = b"\x00"


class VrfError(ElectionError):
    """An ECVRF input, key or proof is not acceptable; `reason` is a short stable label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


# --- points, with the identity as None (coincurve cannot hold the point at infinity) ---------


def _mul(point: PublicKey, scalar: int) -> PublicKey | None:
    scalar %= N
    if scalar == 0:
        return None
    return point.multiply(scalar.to_bytes(SCALAR_LEN, "big"))


def _base_mul(scalar: int) -> PublicKey | None:
    scalar %= N
    if scalar == 0:
        return None
    return PublicKey.from_secret(scalar.to_bytes(SCALAR_LEN, "big"))


def _add(a: PublicKey | None, b: PublicKey | None) -> PublicKey | None:
    if a is None:
        return b
    if b is None:
        return a
    try:
        return PublicKey.combine_keys([a, b])
    except ValueError:  # a == -b: libsecp256k1 refuses to return the point at infinity
        return None


def _parse_point(data: bytes) -> PublicKey | None:
    """A 33-byte compressed SEC1 point, or None when it is not one (libsecp256k1 also rejects
    x >= p, so a parsed point's encoding is canonical)."""
    if len(data) != POINT_LEN or data[0] not in (2, 3):
        return None
    try:
        return PublicKey(bytes(data))  # coincurve takes anything but bytes for a C object
    except ValueError:
        return None


# --- RFC 9381 building blocks ----------------------------------------------------------------


def hash_to_curve(public_key: bytes, alpha: bytes) -> tuple[PublicKey, bytes]:
    """Try-and-increment (RFC 9381 5.4.1.1): H and its 33-byte encoding.

    Raises VrfError in the (probability 2^-256) case that no counter 0..255 gives a point.
    """
    prefix = SUITE + _HASH_TO_CURVE + public_key + alpha
    for ctr in range(256):
        encoded = b"\x02" + hashlib.sha256(prefix + bytes((ctr,)) + _BACK).digest()
        point = _parse_point(encoded)
        if point is not None:
            return point, encoded
    raise VrfError("hash-to-curve-failed", "no valid point for counters 0..255")


def rfc6979_nonce(secret: int, h1: bytes, order: int = N) -> int:
    """Deterministic nonce of RFC 6979 section 3.2 with HMAC-SHA256, for any group order.

    ECVRF (RFC 9381 5.4.2.1) calls it with h1 = SHA256(encoded H).
    """
    qlen = order.bit_length()
    rolen = (qlen + 7) // 8

    def bits2int(data: bytes) -> int:
        value = int.from_bytes(data, "big")
        excess = len(data) * 8 - qlen
        return value >> excess if excess > 0 else value

    def mac(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()

    x_octets = secret.to_bytes(rolen, "big")
    h_octets = (bits2int(h1) % order).to_bytes(rolen, "big")
    v = b"\x01" * 32
    k = b"\x00" * 32
    k = mac(k, v + b"\x00" + x_octets + h_octets)
    v = mac(k, v)
    k = mac(k, v + b"\x01" + x_octets + h_octets)
    v = mac(k, v)
    while True:
        t = b""
        while len(t) * 8 < qlen:
            v = mac(k, v)
            t += v
        candidate = bits2int(t)
        if 1 <= candidate < order:
            return candidate
        k = mac(k, v + b"\x00")
        v = mac(k, v)


def _challenge(*points: bytes) -> bytes:
    """The 16-byte challenge over (Y, H, Gamma, U, V), RFC 9381 5.4.3."""
    digest = hashlib.sha256(SUITE + _CHALLENGE + b"".join(points) + _BACK).digest()
    return digest[:CHALLENGE_LEN]


def _gamma_to_hash(gamma: bytes) -> bytes:
    return hashlib.sha256(SUITE + _PROOF_TO_HASH + gamma + _BACK).digest()


def _decode_proof(pi: bytes) -> tuple[PublicKey, bytes, int, int]:
    if len(pi) != PROOF_LEN:
        raise VrfError("bad-proof-length", f"proof is {len(pi)} bytes, expected {PROOF_LEN}")
    gamma_bytes = pi[:POINT_LEN]
    gamma = _parse_point(gamma_bytes)
    if gamma is None:
        raise VrfError("bad-gamma", "Gamma is not a compressed secp256k1 point")
    c = int.from_bytes(pi[POINT_LEN : POINT_LEN + CHALLENGE_LEN], "big")
    s = int.from_bytes(pi[POINT_LEN + CHALLENGE_LEN :], "big")
    if s >= N:
        raise VrfError("bad-scalar", "s is not below the group order")
    return gamma, gamma_bytes, c, s


# --- public API ------------------------------------------------------------------------------


def public_key_of(secret: bytes) -> bytes:
    """The 33-byte compressed public key Y = x·B of a 32-byte secret."""
    return PublicKey.from_secret(_secret_scalar(secret).to_bytes(SCALAR_LEN, "big")).format()


def _secret_scalar(secret: bytes) -> int:
    if len(secret) != SCALAR_LEN:
        raise VrfError("bad-secret", f"secret is {len(secret)} bytes, expected {SCALAR_LEN}")
    x = int.from_bytes(secret, "big")
    if not 0 < x < N:
        raise VrfError("bad-secret", "secret scalar must be in 1..n-1")
    return x


def prove(secret: bytes, alpha: bytes, *, nonce: int | None = None) -> bytes:
    """The 81-byte proof pi = Gamma ‖ c ‖ s for `alpha` under the 32-byte `secret`.

    `nonce` replaces the RFC 6979 nonce; it exists only so tests can show that another nonce
    gives another valid proof with the SAME output (uniqueness). Never pass it in production:
    a repeated or guessable nonce reveals the secret.
    """
    x = _secret_scalar(secret)
    secret32 = x.to_bytes(SCALAR_LEN, "big")
    y_bytes = PublicKey.from_secret(secret32).format()
    h_point, h_bytes = hash_to_curve(y_bytes, alpha)
    gamma_bytes = h_point.multiply(secret32).format()
    k = rfc6979_nonce(x, hashlib.sha256(h_bytes).digest()) if nonce is None else nonce % N
    k_b, k_h = _base_mul(k), _mul(h_point, k)
    if k_b is None or k_h is None:
        raise VrfError("bad-nonce", "nonce is zero modulo n")
    c_bytes = _challenge(y_bytes, h_bytes, gamma_bytes, k_b.format(), k_h.format())
    s = (k + int.from_bytes(c_bytes, "big") * x) % N
    return gamma_bytes + c_bytes + s.to_bytes(SCALAR_LEN, "big")


def verify(public_key: bytes, pi: bytes, alpha: bytes) -> bytes:
    """Beta (32 bytes) when `pi` is a valid proof for `alpha` under `public_key` (33-byte
    compressed); raises VrfError for any failure."""
    y_point = _parse_point(public_key)
    if y_point is None:
        raise VrfError("bad-public-key", "public key is not a 33-byte compressed secp256k1 point")
    gamma, gamma_bytes, c, s = _decode_proof(pi)
    h_point, h_bytes = hash_to_curve(public_key, alpha)
    # U = s·B − c·Y and V = s·H − c·Gamma; −c is taken as the scalar n − c.
    u = _add(_base_mul(s), _mul(y_point, N - c))
    v = _add(_mul(h_point, s), _mul(gamma, N - c))
    if u is None or v is None:
        # An honest proof never gives the identity here (U = k·B, V = k·H with k != 0).
        raise VrfError("identity-point", "U or V is the point at infinity")
    expected = _challenge(public_key, h_bytes, gamma_bytes, u.format(), v.format())
    if not hmac.compare_digest(expected, pi[POINT_LEN : POINT_LEN + CHALLENGE_LEN]):
        raise VrfError("bad-challenge", "proof does not verify for this key and input")
    return _gamma_to_hash(gamma_bytes)


def proof_to_hash(pi: bytes) -> bytes:
    """Beta of a proof WITHOUT verifying it (RFC 9381 5.2): only for proofs already verified."""
    _gamma, gamma_bytes, _c, _s = _decode_proof(pi)
    return _gamma_to_hash(gamma_bytes)
