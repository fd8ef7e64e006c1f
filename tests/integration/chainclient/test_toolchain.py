"""The contracts toolchain end to end: solcjs compiles contracts/*.sol, the artifact deploys to a
real anvil in a transaction signed by our EIP-1559 code, and the deployed contract answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.build import BuildError, build
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import Eip1559Tx, contract_address, decode_result, encode_call
from tests.integration.chainclient.conftest import receipt_of


def test_build_writes_abi_and_bytecode(contracts_built: Path) -> None:
    art = load_artifact("Counter", contracts_built)
    assert art.function("increment")["stateMutability"] == "nonpayable"
    assert art.event("Incremented")["inputs"][0]["indexed"] is True
    assert art.bytecode.startswith(bytes.fromhex("6080")) and len(art.deployed_bytecode) > 50
    raw = json.loads((contracts_built / "Counter.json").read_text())
    assert raw["compiler"]["name"] == "solcjs" and raw["compiler"]["version"].startswith("0.8.")


def test_build_reports_solidity_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Broken.sol").write_text("pragma solidity ^0.8.0; contract Broken { uint x = ; }\n")
    with pytest.raises(BuildError, match="ParserError"):
        build(src, tmp_path / "out")
    assert not (tmp_path / "out" / "Broken.json").exists()


def test_deploy_and_call_on_anvil(contracts_built: Path, anvil: LocalAnvil) -> None:
    art = load_artifact("Counter", contracts_built)
    key = GatewayKey.from_bytes(DEV_PRIVATE_KEY)
    nonce = int(str(anvil.rpc("eth_getTransactionCount", [key.address, "pending"])), 16)
    tx = Eip1559Tx(
        chain_id=anvil.chain_id,
        nonce=nonce,
        max_priority_fee_per_gas=10**9,
        max_fee_per_gas=10 * 10**9,
        gas=1_000_000,
        to=None,
        data=art.bytecode,
    )
    signed = tx.sign(key)
    # An independent implementation (eth-account) recovers our signer from the raw bytes.
    assert Account.recover_transaction(signed.raw).lower() == key.address
    assert anvil.rpc("eth_sendRawTransaction", [signed.raw_hex]) == signed.hash_hex
    receipt = receipt_of(anvil, signed.hash_hex)
    assert isinstance(receipt, dict) and receipt["status"] == "0x1"
    addr = contract_address(key.address, nonce)
    assert receipt["contractAddress"] == addr
    code = anvil.rpc("eth_getCode", [addr, "latest"])
    assert code == "0x" + art.deployed_bytecode.hex()

    inc = tx.__class__(
        chain_id=anvil.chain_id,
        nonce=nonce + 1,
        max_priority_fee_per_gas=10**9,
        max_fee_per_gas=10 * 10**9,
        gas=100_000,
        to=addr,
        data=encode_call(art.function("increment")),
    ).sign(key)
    anvil.rpc("eth_sendRawTransaction", [inc.raw_hex])
    assert receipt_of(anvil, inc.hash_hex)["status"] == "0x1"
    out = anvil.rpc(
        "eth_call",
        [{"to": addr, "data": "0x" + encode_call(art.function("number")).hex()}, "latest"],
    )
    assert decode_result(art.function("number"), bytes.fromhex(str(out)[2:])) == (1,)
