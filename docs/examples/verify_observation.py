"""Verify an Edgence observation envelope in Python with eth-account (`pip install eth-account`),
independently of the agent's own code.

    python verify_observation.py envelope.json [0xEXPECTED_GATEWAY ...]    (or - for stdin)

Envelope v2 (Observation type v2, domain version "2"). The digest is recomputed from the
signed fields ("domain" and "message"); the envelope's "digest" field is only compared. What is
printed comes from the signed message only (the "reading" block is for people; its "auth" is
not signed beyond the assurance level). Exit code 0 = valid, 1 = invalid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
TYPES = {
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
TRANSPORTS = {0: "sim", 1: "mqtt", 2: "coap", 3: "ble", 4: "serial", 5: "modbus"}
ASSURANCE = {0: "unauthenticated", 1: "transport-authenticated", 2: "device-authenticated"}


def verify(env: dict[str, Any]) -> tuple[str, bytes]:
    """(signer address, digest) of a valid envelope; ValueError saying why otherwise."""
    if env.get("v") != 2:
        raise ValueError(f"unsupported envelope version {env.get('v')!r} (expected 2)")
    m = env["message"]
    message = {
        **m,
        "feed": bytes.fromhex(m["feed"][2:]),
        "deviceId": bytes.fromhex(m["deviceId"][2:]),
        "sensor": bytes.fromhex(m["sensor"][2:]),
        "unit": bytes.fromhex(m["unit"][2:]),
        "value": int(m["value"]),  # a decimal string: int256 does not fit a JSON number
    }
    signable = encode_typed_data(
        full_message={
            "types": TYPES,
            "primaryType": "Observation",
            "domain": env["domain"],
            "message": message,
        }
    )
    digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
    if env.get("digest") and bytes.fromhex(env["digest"][2:]) != digest:
        raise ValueError(f"digest mismatch: the signed fields hash to 0x{digest.hex()}")
    sig = bytes.fromhex(env["signature"][2:])
    if len(sig) != 65 or sig[64] not in (27, 28):
        raise ValueError("signature must be 65 bytes r || s || v with v 27 or 28")
    if int.from_bytes(sig[32:64], "big") > SECP256K1_N // 2:
        raise ValueError("high-S signature (not canonical): refused")
    signer = Account.recover_message(signable, signature=sig).lower()
    if signer != env["gateway"].lower():
        raise ValueError(f"signature recovers to {signer}, not to gateway {env['gateway']}")
    return signer, digest


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else "-"
    expected = {a.lower() for a in argv[2:]}
    env = json.loads(sys.stdin.read() if source == "-" else Path(source).read_text())
    env = env.get("observation", env)  # an oracle query answer holds the envelope
    try:
        signer, digest = verify(env)
        if expected and signer not in expected:
            raise ValueError(f"signer {signer} is not one of the expected gateways")
    except (ValueError, KeyError) as exc:
        print(f"INVALID: {exc}")
        return 1
    m = env["message"]

    def label(h: str) -> str:
        return bytes.fromhex(h[2:]).rstrip(b"\0").decode("ascii", "replace")

    print(
        f"ok signer={signer} seq={m['gatewaySequence']} digest=0x{digest.hex()} "
        f"feed={m['feed']} device={label(m['deviceId'])} sensor={label(m['sensor'])} "
        f"value={m['value']}e{m['exponent']} unit={label(m['unit'])} "
        f"transport={TRANSPORTS.get(m['transport'], m['transport'])} "
        f"assurance={m['assurance']} ({ASSURANCE.get(m['assurance'], '?')}) "
        f"unsigned={','.join(env.get('unsigned', []))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
