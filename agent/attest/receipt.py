"""The gateway's signed receipt of a command: an EIP-712 statement that device D answered
command C with status S (and the result whose canonical bytes hash to R) at time T, so a dApp
can prove to a contract what happened. Pure: no I/O.

    CommandReceipt(bytes32 commandId,bytes32 deviceId,bytes32 action,bytes32 status,
                   bytes32 answerHash,uint64 deviceCounter,uint64 time)

Signed under the gateway's observation domain; `answerHash` is keccak256 of the device's
answer canonical bytes (docs/downlink.md), which the receipt's JSON carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.attest.eip712 import domain_fields, hash_typed_data, keccak256
from agent.attest.keys import GatewayKey, recover_address
from agent.model import Eip712Domain, label_bytes32

RECEIPT_TYPES: dict[str, list[dict[str, str]]] = {
    "CommandReceipt": [
        {"name": "commandId", "type": "bytes32"},
        {"name": "deviceId", "type": "bytes32"},
        {"name": "action", "type": "bytes32"},
        {"name": "status", "type": "bytes32"},
        {"name": "answerHash", "type": "bytes32"},
        {"name": "deviceCounter", "type": "uint64"},
        {"name": "time", "type": "uint64"},
    ]
}


@dataclass(frozen=True, slots=True)
class Receipt:
    message: dict[str, Any]
    digest: bytes
    signature: bytes
    gateway: str
    answer: str  # the device's answer canonical bytes (ASCII)
    result: dict[str, int | str]

    def as_json(self, domain: Eip712Domain) -> dict[str, Any]:
        return {
            "v": 1,
            "type": "CommandReceipt",
            "gateway": self.gateway,
            "domain": domain_fields(domain),
            "message": self.message,
            "answer": self.answer,
            "result": self.result,
            "digest": "0x" + self.digest.hex(),
            "signature": "0x" + self.signature.hex(),
        }


def receipt_message(
    command_id: str,
    device_id: str,
    action: str,
    status: str,
    answer_canonical: bytes,
    device_counter: int,
    time: int,
) -> dict[str, Any]:
    return {
        "commandId": "0x" + label_bytes32(command_id, "command id").hex(),
        "deviceId": "0x" + label_bytes32(device_id, "device id").hex(),
        "action": "0x" + label_bytes32(action, "action").hex(),
        "status": "0x" + label_bytes32(status, "status").hex(),
        "answerHash": "0x" + keccak256(answer_canonical).hex(),
        "deviceCounter": device_counter,
        "time": time,
    }


def sign_receipt(
    key: GatewayKey,
    domain: Eip712Domain,
    message: dict[str, Any],
    answer_canonical: bytes,
    result: dict[str, int | str],
) -> Receipt:
    digest = hash_typed_data(RECEIPT_TYPES, "CommandReceipt", domain_fields(domain), message)
    return Receipt(
        message=message,
        digest=digest,
        signature=key.sign_digest(digest),
        gateway=key.address,
        answer=answer_canonical.decode("ascii"),
        result=result,
    )


def verify_receipt(doc: dict[str, Any] | str | bytes) -> str:
    """The signer's address (0x-lowercase) of a receipt's JSON, after checking that the digest
    is the EIP-712 hash of its domain and message and that answerHash covers its answer text;
    raises ValueError otherwise."""
    obj = json.loads(doc) if isinstance(doc, str | bytes) else doc
    digest = hash_typed_data(RECEIPT_TYPES, "CommandReceipt", obj["domain"], obj["message"])
    if "0x" + digest.hex() != obj["digest"]:
        raise ValueError("the receipt's digest is not the EIP-712 hash of its message")
    answer_hash = "0x" + keccak256(str(obj["answer"]).encode("ascii")).hex()
    if answer_hash != obj["message"]["answerHash"]:
        raise ValueError("answerHash does not cover the receipt's answer")
    signer = recover_address(digest, bytes.fromhex(str(obj["signature"])[2:]))
    if signer != str(obj["gateway"]).lower():
        raise ValueError(f"signed by {signer}, not by the gateway {obj['gateway']}")
    return signer


__all__ = ["RECEIPT_TYPES", "Receipt", "receipt_message", "sign_receipt", "verify_receipt"]
