"""Calls and transactions to one deployed contract through the chain client, and a contract's
revert data as readable text (custom errors of its ABI, require() messages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi.abi import decode as abi_decode

from agent.attest.eip712 import keccak256
from agent.chainclient.contracts import Artifact
from agent.chainclient.rpc import RpcClient
from agent.chainclient.sender import TxSender
from agent.chainclient.tx import decode_result, encode_call
from agent.errors import ChainError, RpcError, TransactionError

_ERROR_STRING = keccak256(b"Error(string)")[:4]


def _abi_type(p: dict[str, Any]) -> str:
    t = str(p["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in p["components"]) + ")" + t[5:]
    return t


def _show(v: Any) -> str:
    if isinstance(v, bytes):
        return "0x" + v.hex()
    return str(v)


def revert_reason(abi: Sequence[dict[str, Any]], data: Any) -> str:
    """A contract's revert data as text: `Replayed(0xab.., 7, 9)` for a custom error of `abi`,
    the message of a require(), or the raw hex when it is neither."""
    if not isinstance(data, str) or not data.startswith("0x") or len(data) < 10:
        return "reverted without a reason"
    raw = bytes.fromhex(data[2:])
    sel, body = raw[:4], raw[4:]
    try:
        if sel == _ERROR_STRING:
            return str(abi_decode(["string"], body)[0])
        for item in abi:
            if item.get("type") != "error":
                continue
            types = [_abi_type(p) for p in item.get("inputs", [])]
            if keccak256(f"{item['name']}({','.join(types)})".encode())[:4] == sel:
                args = abi_decode(types, body)
                return f"{item['name']}({', '.join(_show(a) for a in args)})"
    except Exception:  # undecodable data from a foreign contract: show it as it is
        return data
    return data


def _reason_of_rpc(exc: RpcError, abi: Sequence[dict[str, Any]]) -> str:
    return revert_reason(abi, exc.data) if exc.data else exc.message


def _reason_of(exc: BaseException, abi: Sequence[dict[str, Any]]) -> str:
    cause = exc.__cause__
    if isinstance(cause, RpcError):
        return revert_reason(abi, cause.data) if cause.data else cause.message
    return str(exc)


class ContractClient:
    """Calls and transactions to one deployed contract with the gateway key (via TxSender)."""

    def __init__(self, rpc: RpcClient, sender: TxSender, address: str, artifact: Artifact) -> None:
        self.rpc = rpc
        self.sender = sender
        self.address = address
        self.art = artifact

    async def call(self, fn: str, *args: Any) -> tuple[Any, ...]:
        item = self.art.function(fn)
        data = "0x" + encode_call(item, *args).hex()
        try:
            out = await self.rpc.call("eth_call", [{"to": self.address, "data": data}, "latest"])
        except RpcError as exc:
            raise ChainError(f"{self.art.name}.{fn}: {_reason_of_rpc(exc, self.art.abi)}") from exc
        raw = bytes.fromhex(str(out)[2:])
        if not raw and item.get("outputs"):
            raise ChainError(
                f"no {self.art.name} at {self.address} (the call returned nothing): "
                "check the contract address in [masternode] and chain.rpc_url"
            )
        return decode_result(item, raw)

    async def transact(self, fn: str, *args: Any, value: int = 0) -> dict[str, Any]:
        """Send one call and wait for its receipt; a revert raises TransactionError with the
        contract's reason (e.g. `AlreadyRegistered(0x..)`)."""
        data = encode_call(self.art.function(fn), *args)
        try:
            tx_id = await self.sender.send(self.address, data, value=value)
        except TransactionError as exc:
            raise TransactionError(f"{fn}: {_reason_of(exc, self.art.abi)}") from exc
        return await self.sender.wait(tx_id)
