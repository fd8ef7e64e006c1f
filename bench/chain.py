"""The gas benches' chain: a real anvil driven with the dev key, transactions sent and waited
for, contracts deployed, masternodes registered with collateral. Shared by
bench/election_cost.py and bench/oracle_gas.py (one set-up, not one per bench)."""

from __future__ import annotations

import time
from typing import Any

from agent.attest.keys import GatewayKey
from agent.chainclient.anvil import DEV_PRIVATE_KEY, LocalAnvil
from agent.chainclient.contracts import load_artifact
from agent.chainclient.tx import (
    Eip1559Tx,
    SignedTx,
    contract_address,
    encode_call,
    encode_constructor,
)

COLLATERAL = 10**18


def gas(rc: dict[str, Any]) -> int:
    return int(rc["gasUsed"], 16)


class Chain:
    """`send` signs, broadcasts and returns the receipt (raising if it reverted); with automine
    off, `broadcast` only sends and `mine` + `receipt` finish the job."""

    def __init__(self, node: LocalAnvil, gas_limit: int = 5_000_000) -> None:
        self.node = node
        self.gas_limit = gas_limit
        self.dev = GatewayKey.from_bytes(DEV_PRIVATE_KEY)

    def nonce(self, address: str) -> int:
        return int(str(self.node.rpc("eth_getTransactionCount", [address, "pending"])), 16)

    def broadcast(
        self, key: GatewayKey, to: str | None, data: bytes, value: int = 0, nonce: int | None = None
    ) -> SignedTx:
        n = self.nonce(key.address) if nonce is None else nonce
        tx = Eip1559Tx(self.node.chain_id, n, 10**9, 50 * 10**9, self.gas_limit, to, value, data)
        signed = tx.sign(key)
        self.node.rpc("eth_sendRawTransaction", [signed.raw_hex])
        return signed

    def receipt(self, signed: SignedTx) -> dict[str, Any]:
        for _ in range(4000):
            rc = self.node.rpc("eth_getTransactionReceipt", [signed.hash_hex])
            if isinstance(rc, dict):
                if rc["status"] != "0x1":
                    raise RuntimeError(f"transaction reverted: {rc}")
                return rc
            time.sleep(0.005)
        raise RuntimeError(f"no receipt for {signed.hash_hex}")

    def send(self, key: GatewayKey, to: str | None, data: bytes, value: int = 0) -> dict[str, Any]:
        return self.receipt(self.broadcast(key, to, data, value))

    def deploy(self, name: str, *args: Any) -> str:
        nonce = self.nonce(self.dev.address)
        art = load_artifact(name)
        self.send(self.dev, None, art.bytecode + encode_constructor(art.abi, *args))
        return contract_address(self.dev.address, nonce)

    def head(self) -> int:
        return int(str(self.node.rpc("eth_blockNumber")), 16)

    def mine(self) -> None:
        self.node.rpc("evm_mine")

    def mine_to(self, height: int) -> None:
        while self.head() < height:
            self.mine()

    def automine(self, on: bool) -> None:
        self.node.rpc("evm_setAutomine", [on])

    def block_hash(self, n: int) -> bytes:
        block = self.node.rpc("eth_getBlockByNumber", [hex(n), False])
        assert isinstance(block, dict)
        return bytes.fromhex(str(block["hash"])[2:])

    def fund(self, key: GatewayKey, wei: int = 10**22) -> None:
        self.node.rpc("anvil_setBalance", [key.address, hex(wei)])

    def register_masternodes(
        self, registry: str, keys: list[GatewayKey], vrf_keys: list[bytes]
    ) -> list[int]:
        """Fund and register each key (collateral, its VRF key); the gas of each registration.
        Sent together and mined in as few blocks as the gas limit allows."""
        fn = load_artifact("MasternodeRegistry").function("register")
        for key in keys:
            self.fund(key)
        self.automine(False)
        try:
            sent = [
                self.broadcast(key, registry, encode_call(fn, vrf), COLLATERAL)
                for key, vrf in zip(keys, vrf_keys, strict=True)
            ]
            return self.mine_all(sent)
        finally:
            self.automine(True)

    def mine_all(self, sent: list[SignedTx]) -> list[int]:
        """Mine until every transaction in `sent` has a receipt; their gas, in order."""
        pending = {s.hash_hex for s in sent}
        while pending:
            self.mine()
            pending = {
                h
                for h in pending
                if not isinstance(self.node.rpc("eth_getTransactionReceipt", [h]), dict)
            }
        return [gas(self.receipt(s)) for s in sent]
