"""EIP-1559 encoding and signing against an independent implementation (eth-account), and the
ABI helpers against known selectors."""

from __future__ import annotations

import pytest
from eth_account import Account

from agent.attest.keys import GatewayKey, to_checksum_address
from agent.chainclient.tx import (
    Eip1559Tx,
    contract_address,
    decode_result,
    encode_call,
    event_topic,
    selector,
)

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


@pytest.mark.parametrize(
    "to, value, data",
    [
        ("0x5fbdb2315678afecb367f032d93f642f64180aa3", 0, bytes.fromhex("d09de08a")),
        ("0x" + "11" * 20, 10**18, b""),
        (None, 0, bytes.fromhex("6080604052")),
    ],
)
def test_signed_bytes_equal_eth_account(to: str | None, value: int, data: bytes) -> None:
    key = GatewayKey.from_bytes(KEY)
    tx = Eip1559Tx(31337, 7, 2 * 10**9, 30 * 10**9, 90_000, to, value, data)
    ours = tx.sign(key)
    fields = {
        "type": 2,
        "chainId": 31337,
        "nonce": 7,
        "maxPriorityFeePerGas": 2 * 10**9,
        "maxFeePerGas": 30 * 10**9,
        "gas": 90_000,
        "value": value,
        "data": data,
        "accessList": [],
    }
    if to is not None:
        fields["to"] = to_checksum_address(to)  # eth-account wants the checksummed form
    theirs = Account.sign_transaction(fields, KEY)
    # Both use RFC 6979 deterministic nonces, so the signed bytes must be identical.
    assert ours.raw == bytes(theirs.raw_transaction)
    assert ours.hash == bytes(theirs.hash)
    assert Account.recover_transaction(ours.raw).lower() == key.address


def test_bumped_raises_both_fees_by_at_least_ten_percent() -> None:
    tx = Eip1559Tx(1, 0, 100, 1000, 21_000, "0x" + "22" * 20)
    b = tx.bumped(13)
    assert b.max_priority_fee_per_gas >= 110 and b.max_fee_per_gas >= 1100
    assert (b.nonce, b.to, b.gas) == (tx.nonce, tx.to, tx.gas)
    tiny = Eip1559Tx(1, 0, 0, 1, 21_000, None).bumped(13)
    assert tiny.max_priority_fee_per_gas == 1 and tiny.max_fee_per_gas == 2


def test_priority_fee_above_max_fee_is_refused() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        Eip1559Tx(1, 0, 10, 5, 21_000, None)


def test_abi_helpers_match_known_values() -> None:
    transfer = {
        "type": "function",
        "name": "transfer",
        "inputs": [{"type": "address"}, {"type": "uint256"}],
        "outputs": [{"type": "bool"}],
    }
    assert selector(transfer).hex() == "a9059cbb"
    data = encode_call(transfer, "0x" + "33" * 20, 5)
    assert data[:4].hex() == "a9059cbb" and len(data) == 4 + 64
    assert decode_result(transfer, (1).to_bytes(32)) == (True,)
    ev = {
        "type": "event",
        "name": "Transfer",
        "inputs": [{"type": "address"}, {"type": "address"}, {"type": "uint256"}],
    }
    assert event_topic(ev) == ("0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")
    # The first contract anvil's first development account deploys.
    assert contract_address("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", 0) == (
        "0x5fbdb2315678afecb367f032d93f642f64180aa3"
    )
