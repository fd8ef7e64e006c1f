"""The gateway's signed statement that a range of its sequences was dropped, and its check.

With `journal.overflow = "drop-oldest"` the journal may remove observations that never reached
upstream. Each such range is announced on `<prefix>/<gateway>/dropped` as an EIP-712 statement
signed by the gateway key under the same domain as its observations::

    Dropped(uint64 firstSequence,uint64 lastSequence,uint64 droppedAt)

Envelope, UTF-8 JSON, compact separators, keys in this order::

    {"v":1,"type":"Dropped","gateway":"0x<40 hex>","domain":{...same as observations...},
     "message":{"firstSequence":int,"lastSequence":int,"droppedAt":int},
     "digest":"0x<64 hex>","signature":"0x<130 hex>"}

A consumer accounts for every sequence number as delivered or covered by a verified statement.
Signatures are deterministic (RFC 6979), so a statement published again is byte-identical.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.attest.eip712 import domain_fields, domain_separator, hash_struct, keccak256
from agent.attest.keys import GatewayKey, recover_address
from agent.attest.observation import (
    _ADDRESS_RE,
    _BYTES32_RE,
    _SIGNATURE_RE,
    _get,
    _get_int,
    _get_str,
    _parse,
    read_domain,
)
from agent.errors import EnvelopeError
from agent.model import UINT64_MAX, Eip712Domain

DROPPED_TYPE = "Dropped(uint64 firstSequence,uint64 lastSequence,uint64 droppedAt)"
DROPPED_TYPES: dict[str, list[dict[str, str]]] = {
    "Dropped": [
        {"name": "firstSequence", "type": "uint64"},
        {"name": "lastSequence", "type": "uint64"},
        {"name": "droppedAt", "type": "uint64"},
    ]
}
_COMPACT = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class VerifiedDrop:
    """What a valid statement proves: `signer` says it dropped first..last at `dropped_at`."""

    signer: str
    first_sequence: int
    last_sequence: int
    dropped_at: int
    domain: Eip712Domain


def dropped_digest(domain: Eip712Domain, first: int, last: int, dropped_at: int) -> bytes:
    message = {"firstSequence": first, "lastSequence": last, "droppedAt": dropped_at}
    return keccak256(
        b"\x19\x01" + domain_separator(domain) + hash_struct(DROPPED_TYPES, "Dropped", message)
    )


def sign_dropped(
    key: GatewayKey, domain: Eip712Domain, first: int, last: int, dropped_at: int
) -> bytes:
    """The statement's envelope bytes (the same bytes every time for the same input)."""
    if not 1 <= first <= last <= UINT64_MAX or not 0 <= dropped_at <= UINT64_MAX:
        raise ValueError(f"bad drop range {first}..{last} at {dropped_at}")
    digest = dropped_digest(domain, first, last, dropped_at)
    envelope: dict[str, Any] = {
        "v": 1,
        "type": "Dropped",
        "gateway": key.address,
        "domain": domain_fields(domain),
        "message": {"firstSequence": first, "lastSequence": last, "droppedAt": dropped_at},
        "digest": "0x" + digest.hex(),
        "signature": "0x" + key.sign_digest(digest).hex(),
    }
    return _COMPACT.encode(envelope).encode("utf-8")


def is_dropped_statement(data: bytes | str) -> bool:
    """Whether a JSON document says it is a Dropped statement (then check it with
    verify_dropped; anything else is an observation envelope)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("type") == "Dropped"


def verify_dropped(data: bytes | str) -> VerifiedDrop:
    """Check a statement from its signed fields up; raise EnvelopeError with the reason."""
    env = _parse(data)
    if _get(env, "v") != 1 or _get(env, "type") != "Dropped":
        raise EnvelopeError("not a version 1 Dropped statement")
    gateway = _get_str(env, "gateway", _ADDRESS_RE).lower()
    domain = read_domain(env)
    first = _get_int(env, "message.firstSequence", 1, UINT64_MAX)
    last = _get_int(env, "message.lastSequence", first, UINT64_MAX)
    at = _get_int(env, "message.droppedAt", 0, UINT64_MAX)
    digest = dropped_digest(domain, first, last, at)
    if bytes.fromhex(_get_str(env, "digest", _BYTES32_RE)[2:]) != digest:
        raise EnvelopeError(f"digest mismatch: the signed fields hash to 0x{digest.hex()}")
    signature = bytes.fromhex(_get_str(env, "signature", _SIGNATURE_RE)[2:])
    signer = recover_address(digest, signature)
    if signer != gateway:
        raise EnvelopeError(f"signature does not recover to gateway {gateway} (but to {signer})")
    return VerifiedDrop(signer, first, last, at, domain)
