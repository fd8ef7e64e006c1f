"""The oracle's calldata: the ABI encoding of submit and submitBatch; revert reasons."""

from __future__ import annotations

from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode

from agent.attest.eip712 import keccak256
from agent.attest.keys import GatewayKey
from agent.attest.observation import ObservationSigner, VerifiedObservation, verify_envelope
from agent.masternode import revert_reason
from agent.model import AuthMethod, Eip712Domain, Reading, Transport
from agent.oracle.calldata import (
    OBSERVATION_TUPLE,
    SUBMIT_BATCH_SELECTOR,
    SUBMIT_SELECTOR,
    submit_batch_calldata,
    submit_calldata,
)

DOMAIN = Eip712Domain("Edgence", "2", 31337, "0x" + "cd" * 20)


def verified(value: int, seq: int) -> VerifiedObservation:
    key = GatewayKey.generate()
    r = Reading(
        "dev-1", "temp", value, -2, "Cel", 1_767_225_600, 4, Transport.MQTT, AuthMethod.HMAC
    )
    return verify_envelope(ObservationSigner(key, DOMAIN).sign(r, seq).envelope)


def test_calldata_is_the_abi_encoding_of_submit_and_submit_batch() -> None:
    sig = "(bytes32,bytes32,bytes32,int256,int8,bytes32,uint64,uint64,uint64,uint8,uint8)"
    assert keccak256(f"submit(address,{sig},bytes)".encode())[:4] == SUBMIT_SELECTOR
    assert (
        keccak256(f"submitBatch(address[],{sig}[],bytes[])".encode())[:4] == SUBMIT_BATCH_SELECTOR
    )
    a, b = verified(-5, 1), verified(7, 2)
    data = submit_calldata(a)
    gateway, tup, signature = abi_decode(["address", OBSERVATION_TUPLE, "bytes"], data[4:])
    assert gateway.lower() == a.signer and signature == a.signature
    assert tup[3] == -5 and tup[4] == -2 and tup[8] == 1 and tup[1].rstrip(b"\0") == b"dev-1"
    assert tup[0] == a.feed and tup[9:] == (1, 2)  # feed; transport MQTT, assurance (HMAC)
    batch = submit_batch_calldata([a, b])
    gws, tups, sigs = abi_decode(["address[]", f"{OBSERVATION_TUPLE}[]", "bytes[]"], batch[4:])
    assert [t[3] for t in tups] == [-5, 7] and len(gws) == len(sigs) == 2


def test_revert_reasons_are_decoded_by_the_abi() -> None:
    abi: list[dict[str, Any]] = [
        {
            "type": "error",
            "name": "Replayed",
            "inputs": [
                {"name": "gateway", "type": "address"},
                {"name": "seq", "type": "uint64"},
                {"name": "last", "type": "uint64"},
            ],
        },
        {"type": "error", "name": "HighS", "inputs": []},
    ]
    gw = "0x" + "ab" * 20
    data = keccak256(b"Replayed(address,uint64,uint64)")[:4] + abi_encode(
        ["address", "uint64", "uint64"], [gw, 3, 9]
    )
    assert revert_reason(abi, "0x" + data.hex()) == f"Replayed({gw}, 3, 9)"
    assert revert_reason(abi, "0x" + keccak256(b"HighS()")[:4].hex()) == "HighS()"
    text = keccak256(b"Error(string)")[:4] + abi_encode(["string"], ["collateral"])
    assert revert_reason(abi, "0x" + text.hex()) == "collateral"
    assert revert_reason(abi, "0xdeadbeef") == "0xdeadbeef"
    assert revert_reason(abi, None) == "reverted without a reason"
