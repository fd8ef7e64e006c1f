"""EIP-712 typed-data hashing: a small generic encoder for any types, and a fast path for the
one type the gateway signs (Observation), which runs for every reading. Pure code, no I/O.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.model import UINT64_MAX, Eip712Domain, Reading, label_bytes32, transport_code

TypeDefs = Mapping[str, Sequence[Mapping[str, str]]]
"""Struct definitions as in eth_signTypedData JSON: {"Mail": [{"name": .., "type": ..}, ..]}."""

_WORD = 2**256
_IDENT_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*\Z")
_ARRAY_SUFFIX_RE = re.compile(r"^(.+)\[(\d*)\]\Z")
_INT_TYPE_RE = re.compile(r"^(u?)int(\d{1,3})\Z")
_BYTES_N_RE = re.compile(r"^bytes(\d{1,2})\Z")
_DEC_RE = re.compile(r"^-?[0-9]+\Z")
_HEX_INT_RE = re.compile(r"^-?0[xX][0-9a-fA-F]+\Z")
_HEX_BYTES_RE = re.compile(r"^0[xX](?:[0-9a-fA-F]{2})*\Z")
_ADDRESS_RE = re.compile(r"^0[xX][0-9a-fA-F]{40}\Z")


def _keccak256_new(data: bytes) -> bytes:
    from Crypto.Hash import keccak

    return keccak.new(data=data, digest_bits=256).digest()


def _keccak_library() -> ctypes.CDLL | None:
    """pycryptodome's Keccak C library (Crypto/Hash/_keccak.*.so), opened with ctypes: its own
    loader (`Crypto.Hash.keccak`) goes through cffi, which parses C declarations with pycparser
    at import, about 1 MB resident that nothing else in the agent needs."""
    from Crypto.Util._file_system import pycryptodome_filename

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = pycryptodome_filename(["Crypto", "Hash"], "_keccak" + suffix)
        if os.path.isfile(path):
            try:
                # PyDLL: the calls keep the GIL. Each takes about a microsecond, and letting go of
                # the GIL around it lets the event loop take it; the journal thread then waits
                # for it back for up to the switch interval (5 ms), six times per observation.
                lib = ctypes.PyDLL(path)
            except OSError:
                return None
            vp, size, u8 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint8
            for name, args in (
                ("keccak_init", [ctypes.POINTER(vp), size, u8]),
                ("keccak_destroy", [vp]),
                ("keccak_reset", [vp]),
                ("keccak_absorb", [vp, ctypes.c_char_p, size]),
                ("keccak_digest", [vp, ctypes.c_char_p, size, u8]),
            ):
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, ctypes.c_int
            return lib
    return None


class _Destroy:
    """Frees a thread's Keccak state when that thread's local data goes (the thread ended).
    Not while the interpreter shuts down: the main thread's locals are cleared after modules are
    torn down, and calling into a C library then is what made the earlier cffi-held state
    crash the process at exit (rc 139); the process is ending, so the memory goes anyway."""

    _finalizing = staticmethod(sys.is_finalizing)

    def __init__(self, destroy: Callable[[ctypes.c_void_p], int], state: ctypes.c_void_p) -> None:
        self.destroy, self.state = destroy, state

    def __del__(self) -> None:
        if not self._finalizing():
            self.destroy(self.state)


class _KeccakState(threading.local):
    """One reusable Keccak-256 state per thread, on pycryptodome's own C functions.
    `keccak.new()` allocates a state, wraps it in two Python objects and frees it again for
    every hash: about 60% of a short hash's time (and two hashes per observation)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        state = ctypes.c_void_p()
        if lib.keccak_init(ctypes.byref(state), 64, 24):  # capacity 512 bits: Keccak-256
            raise RuntimeError("keccak_init failed")
        self.state, self.owner = state, _Destroy(lib.keccak_destroy, state)
        self.out = ctypes.create_string_buffer(32)
        self.reset, self.absorb = lib.keccak_reset, lib.keccak_absorb
        self.digest = lib.keccak_digest


# Known digests the fast path must reproduce before it is used.
_KECCAK256_VECTORS = {
    b"": bytes.fromhex("c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
    b"abc": bytes.fromhex("4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
}


def _fast_keccak256() -> Callable[[bytes], bytes] | None:
    lib = _keccak_library()
    if lib is None:
        return None
    local = _KeccakState(lib)

    def keccak256(data: bytes) -> bytes:
        """Keccak-256 as Ethereum uses it (not NIST SHA3-256)."""
        s = local
        state, out = s.state, s.out
        if s.reset(state) or s.absorb(state, data, len(data)) or s.digest(state, out, 32, 1):
            raise RuntimeError("keccak failed")
        return out.raw

    ok = all(keccak256(m) == d for m, d in _KECCAK256_VECTORS.items())
    return keccak256 if ok else None


keccak256: Callable[[bytes], bytes] = _fast_keccak256() or _keccak256_new
"""Keccak-256 as Ethereum uses it (not NIST SHA3-256): pycryptodome's C code with a state kept
per thread, `keccak.new()` if its library cannot be opened directly (the same digests)."""


# --- generic encoder ------------------------------------------------------------------------


def _base_type(type_name: str) -> str:
    """`Person[][3]` -> `Person`."""
    cut = type_name.find("[")
    return type_name if cut < 0 else type_name[:cut]


def _members(types: TypeDefs, struct: str) -> Sequence[Mapping[str, str]]:
    try:
        return types[struct]
    except KeyError:
        raise ValueError(f"unknown struct type {struct!r}") from None


def _dependencies(types: TypeDefs, primary_type: str) -> list[str]:
    """Struct types referenced (transitively) by primary_type, itself excluded."""
    found: set[str] = set()
    pending = [primary_type]
    while pending:
        struct = pending.pop()
        for member in _members(types, struct):
            base = _base_type(member["type"])
            if base in types and base != primary_type and base not in found:
                found.add(base)
                pending.append(base)
    return sorted(found)


def _struct_signature(types: TypeDefs, struct: str) -> str:
    fields = []
    for member in _members(types, struct):
        name, type_name = member["name"], member["type"]
        if not _IDENT_RE.match(name):
            raise ValueError(f"field name {name!r} of struct {struct} is not an identifier")
        fields.append(f"{type_name} {name}")
    return f"{struct}({','.join(fields)})"


def encode_type(types: TypeDefs, primary_type: str) -> str:
    """`Primary(..)` followed by every referenced struct's signature, sorted by name."""
    order = [primary_type, *_dependencies(types, primary_type)]
    return "".join(_struct_signature(types, struct) for struct in order)


def type_hash(types: TypeDefs, primary_type: str) -> bytes:
    return keccak256(encode_type(types, primary_type).encode("ascii"))


def _parse_int(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where} must be an integer, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _DEC_RE.match(text):
            return int(text, 10)
        if _HEX_INT_RE.match(text):
            return int(text, 16)
    raise ValueError(f"{where} must be an integer, a decimal string or a 0x hex string")


def _parse_bytes(value: object, where: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str) and _HEX_BYTES_RE.match(value):
        return bytes.fromhex(value[2:])
    raise ValueError(f"{where} must be bytes or a 0x hex string of whole bytes")


def _encode_atomic(type_name: str, value: object, where: str) -> bytes | None:
    """The 32-byte word of an atomic type, or None when type_name is not atomic."""
    if m := _INT_TYPE_RE.match(type_name):
        bits = int(m.group(2))
        if bits % 8 or not 8 <= bits <= 256:
            raise ValueError(f"{where}: {type_name} is not a valid integer type")
        number = _parse_int(value, where)
        lo, hi = (0, 2**bits) if m.group(1) else (-(2 ** (bits - 1)), 2 ** (bits - 1))
        if not lo <= number < hi:
            raise ValueError(f"{where} = {number} is out of range for {type_name}")
        return (number % _WORD).to_bytes(32)
    if m := _BYTES_N_RE.match(type_name):
        size = int(m.group(1))
        if not 1 <= size <= 32:
            raise ValueError(f"{where}: {type_name} is not a valid fixed bytes type")
        raw = _parse_bytes(value, where)
        if len(raw) != size:
            raise ValueError(f"{where} has {len(raw)} bytes, {type_name} needs exactly {size}")
        return raw.ljust(32, b"\0")
    if type_name == "bool":
        if value is True or value is False or (type(value) is int and value in (0, 1)):
            return int(bool(value)).to_bytes(32)
        raise ValueError(f"{where} must be a bool")
    if type_name == "address":
        if isinstance(value, str) and _ADDRESS_RE.match(value):
            return bytes.fromhex(value[2:]).rjust(32, b"\0")
        if isinstance(value, bytes | bytearray) and len(value) == 20:
            return bytes(value).rjust(32, b"\0")
        raise ValueError(f"{where} must be an address (0x and 40 hex digits)")
    return None


def _encode_value(types: TypeDefs, type_name: str, value: object, where: str) -> bytes:
    if m := _ARRAY_SUFFIX_RE.match(type_name):
        item_type, length = m.group(1), m.group(2)
        if isinstance(value, str | bytes | bytearray) or not isinstance(value, Sequence):
            raise ValueError(f"{where} must be a list for {type_name}")
        if length and len(value) != int(length):
            raise ValueError(f"{where} has {len(value)} items, {type_name} needs {length}")
        return keccak256(
            b"".join(
                _encode_value(types, item_type, item, f"{where}[{i}]")
                for i, item in enumerate(value)
            )
        )
    if type_name in types:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be an object for struct {type_name}")
        return hash_struct(types, type_name, value, where)
    if type_name == "string":
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string")
        return keccak256(value.encode("utf-8"))
    if type_name == "bytes":
        return keccak256(_parse_bytes(value, where))
    word = _encode_atomic(type_name, value, where)
    if word is None:
        raise ValueError(f"{where}: unknown type {type_name!r}")
    return word


def encode_data(
    types: TypeDefs, primary_type: str, data: Mapping[str, Any], where: str | None = None
) -> bytes:
    """The concatenated 32-byte words of data's members (without the type hash)."""
    where = where or primary_type
    words = []
    for member in _members(types, primary_type):
        name = member["name"]
        if name not in data:
            raise ValueError(f"missing field {where}.{name}")
        words.append(_encode_value(types, member["type"], data[name], f"{where}.{name}"))
    return b"".join(words)


def hash_struct(
    types: TypeDefs, primary_type: str, data: Mapping[str, Any], where: str | None = None
) -> bytes:
    return keccak256(type_hash(types, primary_type) + encode_data(types, primary_type, data, where))


# The EIP712Domain members in the order EIP-712 fixes; a domain uses the ones it has.
_DOMAIN_MEMBERS = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
    ("salt", "bytes32"),
)


def hash_domain(domain_fields: Mapping[str, Any]) -> bytes:
    """Domain separator with EIP712Domain built from the fields present in domain_fields."""
    known = {name for name, _ in _DOMAIN_MEMBERS}
    unknown = sorted(set(domain_fields) - known)
    if unknown:
        raise ValueError(f"unknown EIP712Domain field(s) {', '.join(unknown)}")
    members = [{"name": n, "type": t} for n, t in _DOMAIN_MEMBERS if n in domain_fields]
    return hash_struct({"EIP712Domain": members}, "EIP712Domain", domain_fields, "domain")


def hash_typed_data(
    types: TypeDefs,
    primary_type: str,
    domain: Mapping[str, Any],
    message: Mapping[str, Any],
) -> bytes:
    """The digest to sign: keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(message)).

    When types defines EIP712Domain it is used as given; otherwise it is built from the
    fields present in domain.
    """
    if "EIP712Domain" in types:
        separator = hash_struct(types, "EIP712Domain", domain, "domain")
    else:
        separator = hash_domain(domain)
    return keccak256(b"\x19\x01" + separator + hash_struct(types, primary_type, message, "message"))


# --- fast path for Observation --------------------------------------------------------------

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
# Version 2 of the type (domain version "2"): the signature also vouches for the feed, the
# transport and how the device was authenticated (assurance). Field order as ARCHITECTURE.md.
OBSERVATION_TYPE = (
    "Observation(bytes32 feed,bytes32 deviceId,bytes32 sensor,int256 value,int8 exponent,"
    "bytes32 unit,uint64 timestamp,uint64 deviceCounter,uint64 gatewaySequence,"
    "uint8 transport,uint8 assurance)"
)
DOMAIN_VERSION = "2"
DOMAIN_TYPE_HASH = keccak256(DOMAIN_TYPE.encode("ascii"))
OBSERVATION_TYPE_HASH = keccak256(OBSERVATION_TYPE.encode("ascii"))

OBSERVATION_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "Observation": [
        {"name": "feed", "type": "bytes32"},
        {"name": "deviceId", "type": "bytes32"},
        {"name": "sensor", "type": "bytes32"},
        {"name": "value", "type": "int256"},
        {"name": "exponent", "type": "int8"},
        {"name": "unit", "type": "bytes32"},
        {"name": "timestamp", "type": "uint64"},
        {"name": "deviceCounter", "type": "uint64"},
        {"name": "gatewaySequence", "type": "uint64"},
        {"name": "transport", "type": "uint8"},
        {"name": "assurance", "type": "uint8"},
    ],
}
"""The same two types in eth_signTypedData form, for the generic encoder and for wallets."""


def domain_fields(domain: Eip712Domain) -> dict[str, Any]:
    """The domain in eth_signTypedData form, as every signed statement's JSON carries it."""
    return {
        "name": domain.name,
        "version": domain.version,
        "chainId": domain.chain_id,
        "verifyingContract": domain.verifying_contract,
    }


def domain_separator(domain: Eip712Domain) -> bytes:
    return keccak256(
        DOMAIN_TYPE_HASH
        + keccak256(domain.name.encode("utf-8"))
        + keccak256(domain.version.encode("utf-8"))
        + domain.chain_id.to_bytes(32)
        + bytes.fromhex(domain.verifying_contract[2:]).rjust(32, b"\0")
    )


def observation_struct_hash(reading: Reading, gateway_sequence: int, feed: bytes) -> bytes:
    """hashStruct(Observation); the Reading validated its own ranges when it was built."""
    if type(gateway_sequence) is not int or not 0 <= gateway_sequence <= UINT64_MAX:
        raise ValueError(f"gateway sequence {gateway_sequence!r} must be an integer in uint64")
    if len(feed) != 32:
        raise ValueError(f"feed must be 32 bytes, not {len(feed)}")
    return keccak256(
        OBSERVATION_TYPE_HASH
        + feed
        + label_bytes32(reading.device_id, "device id")
        + label_bytes32(reading.sensor, "sensor")
        + (reading.value % _WORD).to_bytes(32)
        + (reading.exponent % _WORD).to_bytes(32)
        + label_bytes32(reading.unit, "unit")
        + reading.timestamp.to_bytes(32)
        + reading.counter.to_bytes(32)
        + gateway_sequence.to_bytes(32)
        + transport_code(reading.transport).to_bytes(32)
        + reading.auth.assurance.to_bytes(32)
    )


def observation_digest(
    domain_sep: bytes, reading: Reading, gateway_sequence: int, feed: bytes
) -> bytes:
    return keccak256(
        b"\x19\x01" + domain_sep + observation_struct_hash(reading, gateway_sequence, feed)
    )
