"""The gateway's secp256k1 key: Ethereum addresses, low-S recoverable signatures, recovery,
and the key file (plain hex or a Web3 Secret Storage v3 keystore that geth and clef import).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import stat
import sys
from types import ModuleType

import coincurve

from agent.attest.eip712 import keccak256
from agent.errors import EnvelopeError, KeyFileError


def _keyfile() -> ModuleType:
    """eth_keyfile, imported only when a keystore is read or written. Its dependency py_ecc
    raises the interpreter's recursion limit to 100000 on import, which lets deeply nested
    input overflow the C stack (a segfault instead of a RecursionError): restore the limit."""
    limit = sys.getrecursionlimit()
    try:
        import eth_keyfile.keyfile as keyfile
    finally:
        sys.setrecursionlimit(limit)
    return keyfile


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N = SECP256K1_N // 2
# geth's "standard" scrypt parameters (n=2^18, r=8, p=1; eth-keyfile fixes r and p).
SCRYPT_N = 262144
PASSPHRASE_HINT = "pass --passphrase-file FILE or set EDGENCE_KEY_PASSPHRASE"

_ADDRESS_RE = re.compile(r"^0[xX][0-9a-fA-F]{40}\Z")
_PLAIN_KEY_RE = re.compile(r"^(?:0[xX])?[0-9a-fA-F]{64}\Z")
_MAX_KEY_FILE_BYTES = 64 * 1024


def address_from_public_key(pub: bytes) -> str:
    """0x-lowercase address of a public key: 65-byte uncompressed, 64-byte raw or 33-byte
    compressed."""
    if len(pub) == 64:
        raw = pub
    elif len(pub) == 65 and pub[0] == 4:
        raw = pub[1:]
    elif len(pub) == 33 and pub[0] in (2, 3):
        raw = coincurve.PublicKey(pub).format(compressed=False)[1:]
    else:
        raise ValueError(f"public key of {len(pub)} bytes is not a secp256k1 public key")
    return "0x" + keccak256(raw)[12:].hex()


def to_checksum_address(addr: str) -> str:
    """EIP-55 mixed-case form of a 0x address."""
    if not _ADDRESS_RE.match(addr):
        raise ValueError(f"address {addr!r} must be 0x and 40 hex digits")
    lower = addr[2:].lower()
    nibbles = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if int(n, 16) >= 8 else c for c, n in zip(lower, nibbles[:40], strict=True)
    )


def recover_address(digest: bytes, signature: bytes) -> str:
    """The 0x-lowercase address that produced a 65-byte r‖s‖v signature over digest.

    Only canonical signatures are accepted (v 27/28, low S), as Ethereum's ecrecover users
    (OpenZeppelin ECDSA) demand; anything else raises EnvelopeError.
    """
    if len(digest) != 32:
        raise EnvelopeError(f"digest is {len(digest)} bytes, must be 32")
    if len(signature) != 65:
        raise EnvelopeError(f"signature is {len(signature)} bytes, must be 65 (r‖s‖v)")
    v = signature[64]
    if v not in (27, 28):
        raise EnvelopeError(f"signature v is {v}, must be 27 or 28")
    r = int.from_bytes(signature[0:32])
    s = int.from_bytes(signature[32:64])
    if not 0 < r < SECP256K1_N:
        raise EnvelopeError("signature r is zero or not below the curve order")
    if not 0 < s <= SECP256K1_HALF_N:
        raise EnvelopeError("signature s is zero or high (s > n/2); only low-S is accepted")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes((v - 27,)), digest, hasher=None
        )
    except Exception as exc:  # coincurve raises a bare Exception on failed recovery
        raise EnvelopeError("signature does not recover to any public key") from exc
    return address_from_public_key(pub.format(compressed=False))


class GatewayKey:
    """A secp256k1 private key; its repr and str show only the address."""

    __slots__ = ("_address", "_key", "_public")

    def __init__(self, private_key: coincurve.PrivateKey) -> None:
        self._key = private_key
        self._public = private_key.public_key.format(compressed=False)
        self._address = address_from_public_key(self._public)

    @classmethod
    def generate(cls) -> GatewayKey:
        return cls(coincurve.PrivateKey())

    @classmethod
    def from_bytes(cls, secret32: bytes) -> GatewayKey:
        if len(secret32) != 32 or not 0 < int.from_bytes(secret32) < SECP256K1_N:
            raise ValueError("a private key must be 32 bytes, between 1 and n-1")
        return cls(coincurve.PrivateKey(bytes(secret32)))

    @property
    def address(self) -> str:
        return self._address

    @property
    def checksum_address(self) -> str:
        return to_checksum_address(self._address)

    @property
    def public_key_uncompressed(self) -> bytes:
        return self._public

    def sign_digest(self, digest32: bytes) -> bytes:
        """65-byte r‖s‖v over a 32-byte digest, v = 27 + recovery id, low S."""
        if len(digest32) != 32:
            raise ValueError(f"digest is {len(digest32)} bytes, must be 32")
        sig = self._key.sign_recoverable(digest32, hasher=None)
        # libsecp256k1 always normalises to low S; check, since verifiers reject high S.
        if int.from_bytes(sig[32:64]) > SECP256K1_HALF_N:
            raise RuntimeError("libsecp256k1 returned a high-S signature")
        return sig[:64] + bytes((27 + sig[64],))

    def derive_secret(self, tag: bytes) -> bytes:
        """A 32-byte secp256k1 secret derived from this key for one purpose (HMAC-SHA256 keyed
        by the secret over `tag`; retried with a counter in the 2^-128 case of a value >= n).
        Lets the election's ECVRF key live in the one key file without being the signing key."""
        secret = self._key.secret
        for counter in range(256):
            out = hmac.new(secret, tag + bytes((counter,)), hashlib.sha256).digest()
            if 0 < int.from_bytes(out) < SECP256K1_N:
                return out
        raise RuntimeError("no valid derived secret in 256 tries")

    def __repr__(self) -> str:
        return f"GatewayKey(address={self._address})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the secret into places (queues, caches) nobody audits.
        raise TypeError("GatewayKey cannot be pickled")


def write_key_file(
    path: str | os.PathLike[str],
    key: GatewayKey,
    passphrase: str | None = None,
    *,
    scrypt_n: int = SCRYPT_N,
) -> None:
    """Create a new key file readable by its owner only (mode 0600 from the first byte).

    Without passphrase: one line "0x<64 hex>". With one: a Web3 Secret Storage v3 keystore
    (scrypt, AES-128-CTR). Lower scrypt_n only in tests. Never overwrites an existing file.
    """
    secret = key._key.secret
    if passphrase is None:
        content = ("0x" + secret.hex() + "\n").encode("ascii")
    else:
        if not passphrase:
            raise KeyFileError(f"refusing to encrypt key file {path} with an empty passphrase")
        keystore = _keyfile().create_keyfile_json(
            secret, passphrase.encode("utf-8"), version=3, kdf="scrypt", iterations=scrypt_n
        )
        content = (json.dumps(keystore, indent=2) + "\n").encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"key file {path} already exists; refusing to overwrite it "
            "(move it away first if you really mean to replace the gateway key)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    try:
        try:
            # umask may have removed the owner's bits; never add any for group/other.
            os.fchmod(fd, 0o600)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None


def load_key_file(path: str | os.PathLike[str], passphrase: str | None = None) -> GatewayKey:
    """Read a key file written by write_key_file (or a geth/clef v3 keystore).

    Refuses files that group or others may access. A passphrase given for a plain file
    is ignored.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(
            f"cannot read key file {path}: permission denied",
            fix="run the agent as the user that owns it",
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}, so other users may read it",
                fix=f"chmod 600 {path}, and check who else could have copied the key",
            )
        try:
            raw = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"key file {path} is too large to be a key file")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {path} is not text") from None
    if text.startswith("{"):
        secret = _decrypt_keystore(path, text, passphrase)
    elif _PLAIN_KEY_RE.match(text):
        secret = bytes.fromhex(text[-64:])
    else:
        raise KeyFileError(
            f"key file {path} is neither a hex private key (0x and 64 hex digits) "
            "nor a JSON keystore"
        )
    try:
        return GatewayKey.from_bytes(secret)
    except ValueError:
        raise KeyFileError(f"key file {path} does not hold a valid secp256k1 key") from None


def _decrypt_keystore(path: str | os.PathLike[str], text: str, passphrase: str | None) -> bytes:
    try:
        keystore = json.loads(text)
    except ValueError:
        raise KeyFileError(f"key file {path} looks like JSON but does not parse") from None
    if not isinstance(keystore, dict) or keystore.get("version") != 3:
        raise KeyFileError(f"key file {path} is not a Web3 Secret Storage v3 keystore")
    if passphrase is None:
        raise KeyFileError(f"key file {path} is encrypted; {PASSPHRASE_HINT}")
    try:
        secret = bytes(_keyfile().decode_keyfile_json(keystore, passphrase.encode("utf-8")))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeyFileError(f"key file {path}: wrong passphrase") from None
        raise KeyFileError(f"key file {path} is not a valid keystore: {exc}") from None
    except (KeyError, TypeError, NotImplementedError) as exc:
        raise KeyFileError(
            f"key file {path} is not a usable keystore ({type(exc).__name__}: {exc})"
        ) from None
    claimed = keystore.get("address")
    if isinstance(claimed, str) and len(secret) == 32 and 0 < int.from_bytes(secret) < SECP256K1_N:
        actual = GatewayKey.from_bytes(secret).address
        if claimed.lower().removeprefix("0x") != actual[2:]:
            raise KeyFileError(
                f"key file {path} claims address 0x{claimed.removeprefix('0x')} "
                f"but holds the key of {actual}"
            )
    return secret
