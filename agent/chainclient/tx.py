"""EIP-1559 (type 2) transactions and ABI calls: pure encoding, no I/O.

RLP comes from the `rlp` package and ABI from `eth-abi` (both maintained by the Ethereum
Foundation's Python team, the encoders web3.py itself uses); signing is the gateway's own
coincurve key, so the secret never enters another library.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import rlp
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode

from agent.attest.eip712 import keccak256
from agent.attest.keys import SECP256K1_HALF_N, GatewayKey

TX_TYPE_EIP1559 = 2


def _addr_bytes(addr: str | None) -> bytes:
    if addr is None:
        return b""  # contract creation
    raw = bytes.fromhex(addr.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"address {addr!r} is not 20 bytes")
    return raw


@dataclass(frozen=True)
class Eip1559Tx:
    chain_id: int
    nonce: int
    max_priority_fee_per_gas: int
    max_fee_per_gas: int
    gas: int
    to: str | None
    value: int = 0
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise ValueError("max_priority_fee_per_gas must not exceed max_fee_per_gas")
        for name in ("chain_id", "nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def _fields(self) -> list[Any]:
        return [
            self.chain_id,
            self.nonce,
            self.max_priority_fee_per_gas,
            self.max_fee_per_gas,
            self.gas,
            _addr_bytes(self.to),
            self.value,
            self.data,
            [],  # access list
        ]

    def signing_hash(self) -> bytes:
        """keccak256(0x02 || rlp([chainId, nonce, ..., accessList])) (EIP-1559)."""
        return keccak256(bytes((TX_TYPE_EIP1559,)) + rlp.encode(self._fields()))

    def sign(self, key: GatewayKey) -> SignedTx:
        sig = key.sign_digest(self.signing_hash())
        r, s, y = int.from_bytes(sig[:32]), int.from_bytes(sig[32:64]), sig[64] - 27
        if s > SECP256K1_HALF_N:  # sign_digest guarantees low S; keep the invariant visible
            raise RuntimeError("high-S signature")
        raw = bytes((TX_TYPE_EIP1559,)) + rlp.encode([*self._fields(), y, r, s])
        return SignedTx(self, raw, keccak256(raw))

    def bumped(self, percent: int = 13, min_priority: int = 0) -> Eip1559Tx:
        """The same transaction with both fees raised by at least `percent` (nodes demand >=10%
        for a replacement) and by at least one wei."""
        tip = max(
            self.max_priority_fee_per_gas * (100 + percent) // 100,
            self.max_priority_fee_per_gas + 1,
            min_priority,
        )
        cap = max(self.max_fee_per_gas * (100 + percent) // 100, self.max_fee_per_gas + 1, tip)
        return replace(self, max_priority_fee_per_gas=tip, max_fee_per_gas=cap)


@dataclass(frozen=True)
class SignedTx:
    tx: Eip1559Tx
    raw: bytes
    hash: bytes

    @property
    def hash_hex(self) -> str:
        return "0x" + self.hash.hex()

    @property
    def raw_hex(self) -> str:
        return "0x" + self.raw.hex()


def contract_address(sender: str, nonce: int) -> str:
    """The address of a contract created by `sender` with `nonce` (CREATE)."""
    return "0x" + keccak256(rlp.encode([_addr_bytes(sender), nonce]))[12:].hex()


# -- ABI ------------------------------------------------------------------------------------


def _type_of(param: dict[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        inner = ",".join(_type_of(c) for c in param["components"])
        return f"({inner}){t[5:]}"
    return t


def signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(_type_of(p) for p in item.get('inputs', []))})"


def selector(item: dict[str, Any]) -> bytes:
    return keccak256(signature(item).encode())[:4]


def event_topic(item: dict[str, Any]) -> str:
    return "0x" + keccak256(signature(item).encode()).hex()


def encode_call(item: dict[str, Any], *args: Any) -> bytes:
    types = [_type_of(p) for p in item.get("inputs", [])]
    if len(types) != len(args):
        raise ValueError(f"{signature(item)} takes {len(types)} arguments, got {len(args)}")
    return selector(item) + abi_encode(types, list(args))


def decode_result(item: dict[str, Any], data: bytes) -> tuple[Any, ...]:
    return tuple(abi_decode([_type_of(p) for p in item.get("outputs", [])], data))


def encode_constructor(abi: list[dict[str, Any]], *args: Any) -> bytes:
    ctor: dict[str, Any] = next((i for i in abi if i.get("type") == "constructor"), {})
    types = [_type_of(p) for p in ctor.get("inputs", [])]
    return abi_encode(types, list(args)) if types else b""
