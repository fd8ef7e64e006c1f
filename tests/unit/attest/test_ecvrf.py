"""ECVRF-SECP256K1-SHA256-TAI: the 45 public vectors, and every way a proof must fail."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from agent.attest import ecvrf
from agent.attest.ecvrf import N, VrfError

VECTOR_FILE = "ecvrf_secp256k1_sha256_tai.json"
VECTOR_COUNT = 45
P = 2**256 - 2**32 - 977  # the secp256k1 field prime

SECRET = bytes.fromhex("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721")
ALPHA = b"sample"


@pytest.fixture(scope="module")
def vectors(vectors_dir: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((vectors_dir / VECTOR_FILE).read_text())
    return data


@pytest.fixture(scope="module")
def good() -> tuple[bytes, bytes]:
    """A public key and a valid proof of ALPHA under it."""
    return ecvrf.public_key_of(SECRET), ecvrf.prove(SECRET, ALPHA)


def test_vector_file_has_all_45_vectors(vectors: list[dict[str, Any]]) -> None:
    assert len(vectors) == VECTOR_COUNT


@pytest.mark.parametrize("index", range(VECTOR_COUNT))
def test_prove_reproduces_vector_proof(vectors: list[dict[str, Any]], index: int) -> None:
    vector = vectors[index]
    secret = bytes.fromhex(vector["priv"])
    assert ecvrf.public_key_of(secret).hex() == vector["pub"]
    assert ecvrf.prove(secret, bytes.fromhex(vector["message"])).hex() == vector["pi"]


@pytest.mark.parametrize("index", range(VECTOR_COUNT))
def test_verify_returns_vector_hash(vectors: list[dict[str, Any]], index: int) -> None:
    vector = vectors[index]
    pi = bytes.fromhex(vector["pi"])
    beta = ecvrf.verify(bytes.fromhex(vector["pub"]), pi, bytes.fromhex(vector["message"]))
    assert beta.hex() == vector["hash"]
    assert ecvrf.proof_to_hash(pi) == beta


def test_rfc6979_nonce_matches_rfc6979_p256_sha256_examples() -> None:
    # RFC 6979 A.2.5 (P-256, SHA-256): the nonce function is generic in the group order.
    q = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    x = int.from_bytes(SECRET, "big")
    sample = ecvrf.rfc6979_nonce(x, hashlib.sha256(b"sample").digest(), q)
    test = ecvrf.rfc6979_nonce(x, hashlib.sha256(b"test").digest(), q)
    assert sample == 0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60
    assert test == 0xD16B6AE827F17175E040871A1C7EC3500192C4C92677336EC2537ACAEE0008E0


def test_another_nonce_gives_another_proof_with_the_same_output(
    good: tuple[bytes, bytes],
) -> None:
    public_key, pi = good
    other = ecvrf.prove(SECRET, ALPHA, nonce=12345)
    assert other != pi
    assert ecvrf.verify(public_key, other, ALPHA) == ecvrf.verify(public_key, pi, ALPHA)


def test_prove_is_deterministic() -> None:
    assert ecvrf.prove(SECRET, ALPHA) == ecvrf.prove(SECRET, ALPHA)


def test_output_depends_on_alpha(good: tuple[bytes, bytes]) -> None:
    public_key, pi = good
    other = ecvrf.prove(SECRET, ALPHA + b"!")
    assert ecvrf.verify(public_key, other, ALPHA + b"!") != ecvrf.verify(public_key, pi, ALPHA)


def _reason(public_key: bytes, pi: bytes, alpha: bytes = ALPHA) -> str:
    with pytest.raises(VrfError) as info:
        ecvrf.verify(public_key, pi, alpha)
    return info.value.reason


def test_tampered_alpha_fails(good: tuple[bytes, bytes]) -> None:
    public_key, pi = good
    assert _reason(public_key, pi, b"samplf") == "bad-challenge"
    assert _reason(public_key, pi, b"") == "bad-challenge"


@pytest.mark.parametrize("position", [1, 20, 33, 40, 48, 49, 60, 80])
def test_any_flipped_proof_byte_fails(good: tuple[bytes, bytes], position: int) -> None:
    public_key, pi = good
    tampered = bytearray(pi)
    tampered[position] ^= 0x01
    assert _reason(public_key, bytes(tampered)) in {"bad-challenge", "bad-gamma", "bad-scalar"}


def test_wrong_challenge_fails(good: tuple[bytes, bytes]) -> None:
    public_key, pi = good
    c = int.from_bytes(pi[33:49], "big")
    wrong = pi[:33] + ((c + 1) % 2**128).to_bytes(16, "big") + pi[49:]
    assert _reason(public_key, wrong) == "bad-challenge"


@pytest.mark.parametrize("s", [N, N + 1, 2**256 - 1])
def test_s_at_or_above_group_order_fails(good: tuple[bytes, bytes], s: int) -> None:
    public_key, pi = good
    assert _reason(public_key, pi[:49] + s.to_bytes(32, "big")) == "bad-scalar"


def _off_curve_x() -> bytes:
    for x in range(1, 100):
        encoded = b"\x02" + x.to_bytes(32, "big")
        if pow((x**3 + 7) % P, (P - 1) // 2, P) != 1:  # x^3 + 7 is not a square
            return encoded
    raise AssertionError("no off-curve x below 100")


def _gammas() -> list[bytes]:
    gx = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798
    on_curve_above_p = next(
        x for x in range(1, 100) if pow((x**3 + 7) % P, (P - 1) // 2, P) == 1 and x + P < 2**256
    )
    return [
        _off_curve_x(),  # not on the curve
        b"\x02" + (on_curve_above_p + P).to_bytes(32, "big"),  # x >= p: not canonical
        b"\x04" + gx.to_bytes(32, "big"),  # uncompressed prefix on 33 bytes
        b"\x00" * 33,  # the SEC1 identity encoding
        b"\x05" + gx.to_bytes(32, "big"),
    ]


@pytest.mark.parametrize("gamma", _gammas())
def test_invalid_gamma_fails(good: tuple[bytes, bytes], gamma: bytes) -> None:
    public_key, pi = good
    assert _reason(public_key, gamma + pi[33:]) == "bad-gamma"
    with pytest.raises(VrfError):
        ecvrf.proof_to_hash(gamma + pi[33:])


def test_valid_but_wrong_gamma_fails(good: tuple[bytes, bytes]) -> None:
    public_key, pi = good
    assert _reason(public_key, public_key + pi[33:]) == "bad-challenge"


@pytest.mark.parametrize("length", [0, 80, 82, 97])
def test_wrong_proof_length_fails(good: tuple[bytes, bytes], length: int) -> None:
    public_key, pi = good
    assert _reason(public_key, (pi * 2)[:length]) == "bad-proof-length"


def _bad_public_keys() -> list[bytes]:
    valid = ecvrf.public_key_of(SECRET)
    return [
        _off_curve_x(),
        b"\x04" + valid[1:],
        valid[1:],
        valid + b"\x00",
        b"\x02" + b"\xff" * 32,  # x >= p
        b"",
    ]


@pytest.mark.parametrize("public_key", _bad_public_keys())
def test_invalid_public_key_fails(good: tuple[bytes, bytes], public_key: bytes) -> None:
    _public_key, pi = good
    assert _reason(public_key, pi) == "bad-public-key"


def test_uncompressed_form_of_the_right_key_is_refused(good: tuple[bytes, bytes]) -> None:
    from coincurve import PublicKey

    public_key, pi = good
    assert _reason(PublicKey(public_key).format(compressed=False), pi) == "bad-public-key"


def test_proof_under_another_key_fails(good: tuple[bytes, bytes]) -> None:
    _public_key, pi = good
    other = ecvrf.public_key_of(b"\x02".rjust(32, b"\x00"))
    assert _reason(other, pi) == "bad-challenge"


def test_u_at_infinity_fails_cleanly(good: tuple[bytes, bytes]) -> None:
    # s = c·x makes U = s·B − c·Y the point at infinity, which coincurve cannot hold.
    public_key, pi = good
    c = 7
    s = c * int.from_bytes(SECRET, "big") % N
    forged = pi[:33] + c.to_bytes(16, "big") + s.to_bytes(32, "big")
    assert _reason(public_key, forged) == "identity-point"


def test_v_at_infinity_fails_cleanly(good: tuple[bytes, bytes]) -> None:
    # Gamma = H and s = c make V = s·H − c·Gamma the point at infinity.
    public_key, _pi = good
    _h, h_bytes = ecvrf.hash_to_curve(public_key, ALPHA)
    c = 9
    forged = h_bytes + c.to_bytes(16, "big") + c.to_bytes(32, "big")
    assert _reason(public_key, forged) == "identity-point"


def test_zero_challenge_and_zero_s_fail_cleanly(good: tuple[bytes, bytes]) -> None:
    public_key, pi = good
    assert _reason(public_key, pi[:33] + bytes(48)) == "identity-point"
    assert _reason(public_key, pi[:33] + bytes(16) + pi[49:]) == "bad-challenge"


@pytest.mark.parametrize("secret", [bytes(32), N.to_bytes(32, "big"), b"\x01" * 31, b""])
def test_invalid_secret_is_refused(secret: bytes) -> None:
    with pytest.raises(VrfError) as info:
        ecvrf.prove(secret, ALPHA)
    assert info.value.reason == "bad-secret"


def test_vrf_error_is_an_election_error() -> None:
    from agent.errors import AgentError, ElectionError

    assert issubclass(VrfError, ElectionError)
    assert issubclass(VrfError, AgentError)
