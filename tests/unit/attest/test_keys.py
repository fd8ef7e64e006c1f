"""Gateway key: addresses, canonical signatures and their recovery, and the key file."""

from __future__ import annotations

import json
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import coincurve
import pytest
from eth_account import Account
from eth_keyfile.keyfile import decode_keyfile_json
from eth_utils.address import to_checksum_address as eth_checksum

from agent.attest.eip712 import keccak256
from agent.attest.keys import (
    SECP256K1_HALF_N,
    SECP256K1_N,
    GatewayKey,
    address_from_public_key,
    load_key_file,
    recover_address,
    to_checksum_address,
    write_key_file,
)
from agent.errors import EnvelopeError, KeyFileError

FAST_SCRYPT = 2**10  # keeps tests quick; the default is geth's 2**18


@pytest.fixture
def secret_hex() -> str:
    return keccak256(os.urandom(32)).hex()  # below the curve order except with odds ~2**-128


@pytest.fixture
def key(secret_hex: str) -> GatewayKey:
    return GatewayKey.from_bytes(bytes.fromhex(secret_hex))


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that removes nothing, so only the code's own mode choice protects the file."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- addresses and signatures ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ],
)
def test_checksum_address_reproduces_eip55_examples(address: str) -> None:
    assert to_checksum_address(address.lower()) == address
    assert to_checksum_address(address.upper().replace("0X", "0x")) == address


def test_address_and_checksum_agree_with_eth_account(key: GatewayKey, secret_hex: str) -> None:
    theirs = Account.from_key(bytes.fromhex(secret_hex)).address
    assert key.checksum_address == theirs
    assert key.address == theirs.lower()
    assert eth_checksum(key.address) == key.checksum_address


def test_address_from_public_key_accepts_all_three_encodings(key: GatewayKey) -> None:
    uncompressed = key.public_key_uncompressed
    compressed = coincurve.PublicKey(uncompressed).format(compressed=True)
    assert len(uncompressed) == 65
    assert address_from_public_key(uncompressed) == key.address
    assert address_from_public_key(uncompressed[1:]) == key.address
    assert address_from_public_key(compressed) == key.address
    with pytest.raises(ValueError, match="32 bytes"):
        address_from_public_key(uncompressed[:32])


def test_signature_is_the_same_deterministic_one_eth_account_makes(
    key: GatewayKey, secret_hex: str
) -> None:
    digest = keccak256(b"edgence")
    theirs = Account.unsafe_sign_hash(digest, bytes.fromhex(secret_hex)).signature
    assert key.sign_digest(digest) == bytes(theirs)


def test_recover_address_returns_the_signer(key: GatewayKey) -> None:
    digest = keccak256(b"x")
    assert recover_address(digest, key.sign_digest(digest)) == key.address


def test_recover_address_rejects_the_high_s_twin(key: GatewayKey) -> None:
    digest = keccak256(b"malleable")
    signature = key.sign_digest(digest)
    s = int.from_bytes(signature[32:64])
    twin = signature[:32] + (SECP256K1_N - s).to_bytes(32) + bytes((55 - signature[64],))
    # The twin is a mathematically valid signature by the same key...
    assert Account._recover_hash(digest, signature=twin).lower() == key.address
    # ...which canonical verifiers refuse.
    with pytest.raises(EnvelopeError, match="high"):
        recover_address(digest, twin)


@pytest.mark.parametrize("v", [0, 1, 26, 29, 255])
def test_recover_address_rejects_v_other_than_27_or_28(key: GatewayKey, v: int) -> None:
    digest = keccak256(b"v")
    signature = key.sign_digest(digest)[:64] + bytes((v,))
    with pytest.raises(EnvelopeError, match=f"v is {v}"):
        recover_address(digest, signature)


@pytest.mark.parametrize("length", [0, 64, 66])
def test_recover_address_rejects_wrong_signature_length(key: GatewayKey, length: int) -> None:
    digest = keccak256(b"len")
    signature = (key.sign_digest(digest) * 2)[:length]
    with pytest.raises(EnvelopeError, match=f"{length} bytes, must be 65"):
        recover_address(digest, signature)


@pytest.mark.parametrize(
    ("r", "s", "reason"),
    [
        (0, 1, "r is zero"),
        (SECP256K1_N, 1, "r is zero or not below"),
        (1, 0, "s is zero"),
        (1, SECP256K1_HALF_N + 1, "high"),
    ],
)
def test_recover_address_rejects_r_or_s_out_of_range(r: int, s: int, reason: str) -> None:
    signature = r.to_bytes(32) + s.to_bytes(32) + b"\x1b"
    with pytest.raises(EnvelopeError, match=reason):
        recover_address(keccak256(b"range"), signature)


def test_recover_address_reports_unrecoverable_signature() -> None:
    # r = 5 is not the x coordinate of any curve point, so nothing can be recovered.
    signature = (5).to_bytes(32) + (1).to_bytes(32) + b"\x1b"
    with pytest.raises(EnvelopeError, match="does not recover"):
        recover_address(keccak256(b"none"), signature)


def test_from_bytes_rejects_zero_and_curve_order() -> None:
    for bad in (bytes(32), SECP256K1_N.to_bytes(32), b"\x01" * 31):
        with pytest.raises(ValueError, match="private key must be 32 bytes"):
            GatewayKey.from_bytes(bad)


def test_repr_str_and_pickle_never_reveal_the_secret(key: GatewayKey, secret_hex: str) -> None:
    assert repr(key) == f"GatewayKey(address={key.address})"
    assert secret_hex not in repr(key) + str(key)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


# --- key files ------------------------------------------------------------------------------


def test_plain_key_file_is_created_0600_even_with_an_open_umask(
    tmp_path: Path, key: GatewayKey, secret_hex: str, open_umask: None
) -> None:
    path = tmp_path / "gateway.key"
    write_key_file(path, key)
    assert _mode(path) == 0o600
    assert path.read_text() == f"0x{secret_hex}\n"
    assert load_key_file(path).address == key.address


def test_load_refuses_a_group_or_world_readable_file_with_the_chmod_hint(
    tmp_path: Path, key: GatewayKey, secret_hex: str
) -> None:
    path = tmp_path / "gateway.key"
    write_key_file(path, key)
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as caught:
        load_key_file(path)
    message = str(caught.value)
    assert "0644" in caught.value.description
    assert caught.value.fix is not None and caught.value.fix.startswith(f"chmod 600 {path}")
    assert f"chmod 600 {path}" in message  # str() shows the fix too
    assert secret_hex not in message


def test_load_refuses_a_group_only_bit_too(tmp_path: Path, key: GatewayKey) -> None:
    path = tmp_path / "gateway.key"
    write_key_file(path, key)
    path.chmod(0o610)
    with pytest.raises(KeyFileError, match="mode 0610"):
        load_key_file(path)


def test_write_refuses_to_overwrite_an_existing_file(tmp_path: Path, key: GatewayKey) -> None:
    path = tmp_path / "gateway.key"
    path.write_text("keep me\n")
    with pytest.raises(KeyFileError, match="already exists; refusing to overwrite"):
        write_key_file(path, key)
    assert path.read_text() == "keep me\n"


def test_encrypted_key_file_round_trips(tmp_path: Path, key: GatewayKey, open_umask: None) -> None:
    path = tmp_path / "gateway.json"
    write_key_file(path, key, "correct horse", scrypt_n=FAST_SCRYPT)
    assert _mode(path) == 0o600
    keystore = json.loads(path.read_text())
    assert keystore["version"] == 3
    assert keystore["crypto"]["kdf"] == "scrypt"
    assert keystore["address"].lower() == key.address[2:]
    assert load_key_file(path, "correct horse").address == key.address


@pytest.mark.timeout(180)  # geth-standard scrypt (256 MiB, ~1 s each on an idle core) several times
def test_default_keystore_uses_geth_standard_scrypt_and_decrypts_independently(
    tmp_path: Path, key: GatewayKey, secret_hex: str
) -> None:
    path = tmp_path / "gateway.json"
    write_key_file(path, key, "pw")
    keystore = json.loads(path.read_text())
    params = keystore["crypto"]["kdfparams"]
    assert (params["n"], params["r"], params["p"], params["dklen"]) == (262144, 8, 1, 32)
    assert secret_hex not in path.read_text()
    assert decode_keyfile_json(keystore, b"pw").hex() == secret_hex


def test_wrong_passphrase_is_reported_as_such(tmp_path: Path, key: GatewayKey) -> None:
    path = tmp_path / "gateway.json"
    write_key_file(path, key, "right", scrypt_n=FAST_SCRYPT)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_key_file(path, "wrong")


def test_missing_passphrase_says_how_to_give_one(tmp_path: Path, key: GatewayKey) -> None:
    path = tmp_path / "gateway.json"
    write_key_file(path, key, "right", scrypt_n=FAST_SCRYPT)
    with pytest.raises(KeyFileError) as caught:
        load_key_file(path)
    assert "--passphrase-file" in str(caught.value)
    assert "EDGENCE_KEY_PASSPHRASE" in str(caught.value)


def test_load_reports_missing_and_garbled_files_without_echoing_them(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(tmp_path / "nope.key")
    path = tmp_path / "garbled.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"0x" + b"ab" * 31 + b"zz\n")
    os.close(fd)
    with pytest.raises(KeyFileError, match="neither a hex private key") as caught:
        load_key_file(path)
    assert "abab" not in str(caught.value)


def test_keystore_whose_address_does_not_match_its_key_is_refused(
    tmp_path: Path, key: GatewayKey
) -> None:
    path = tmp_path / "gateway.json"
    write_key_file(path, key, "pw", scrypt_n=FAST_SCRYPT)
    keystore = json.loads(path.read_text())
    keystore["address"] = "00" * 20
    path.chmod(0o600)
    path.write_text(json.dumps(keystore))
    with pytest.raises(KeyFileError, match="claims address"):
        load_key_file(path, "pw")


# --- derived secrets (the election's ECVRF key) ---------------------------------------------


def test_derived_secret_is_hmac_of_the_key_per_tag(key: GatewayKey, secret_hex: str) -> None:
    import hashlib
    import hmac

    derived = key.derive_secret(b"edgence/test/v1")
    expected = hmac.new(bytes.fromhex(secret_hex), b"edgence/test/v1\x00", hashlib.sha256)
    assert derived == expected.digest()
    assert 0 < int.from_bytes(derived) < SECP256K1_N
    assert derived == key.derive_secret(b"edgence/test/v1")  # stable across calls and restarts
    assert derived != key.derive_secret(b"edgence/other/v1")
    assert derived != bytes.fromhex(secret_hex)
