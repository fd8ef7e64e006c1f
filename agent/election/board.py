"""The ElectionBoard contract as the agent sees it: views read with eth_call at a given block,
the `Submitted` logs of a round, and the call data of the agent's own transactions.
"""

from __future__ import annotations

from typing import Any

import coincurve
from eth_abi.abi import decode as abi_decode

from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.tx import decode_result, encode_call, event_topic
from agent.election.definite import keccak256
from agent.election.tally import BoardSubmission, NodeKeys
from agent.errors import ChainError, ElectionError, RpcError

MODES = {0: "paper", 1: "vrf"}
VRF_KEY_TAG = b"edgence/election/vrf-key"


def compress(uncompressed64: bytes) -> bytes:
    """33-byte compressed form of a 64-byte x || y key; raises ValueError if not on the curve."""
    if len(uncompressed64) != 64:
        raise ValueError(f"key is {len(uncompressed64)} bytes, expected 64")
    return coincurve.PublicKey(b"\x04" + uncompressed64).format()


def _block_tag(block: int | str) -> str:
    return hex(block) if isinstance(block, int) else block


class ElectionBoard:
    """`board = ElectionBoard(rpc, address)`; every read names the block it reads at."""

    def __init__(self, rpc: RpcClient, address: str, artifact: Artifact | None = None) -> None:
        self.rpc = rpc
        self.address = address.lower()
        self.artifact = artifact or load_artifact("ElectionBoard")
        self.submitted_topic = event_topic(self.artifact.event("Submitted"))
        self.used_topic = event_topic(self.artifact.event("DefiniteHashUsed"))

    # -- views ---------------------------------------------------------------------------------
    def _call_params(self, fn: str, args: tuple[Any, ...], block: int | str) -> list[Any]:
        data = encode_call(self.artifact.function(fn), *args)
        return [{"to": self.address, "data": "0x" + data.hex()}, _block_tag(block)]

    def _decode(self, fn: str, out: Any) -> tuple[Any, ...]:
        if isinstance(out, RpcError):
            raise out
        if not isinstance(out, str) or not out.startswith("0x"):
            raise ChainError(f"ElectionBoard.{fn}: the node answered {out!r}")
        raw = bytes.fromhex(out[2:])
        if not raw:
            raise ElectionError(
                f"no ElectionBoard at {self.address} (eth_call {fn} returned nothing): "
                "check election.board"
            )
        return decode_result(self.artifact.function(fn), raw)

    async def call(self, fn: str, *args: Any, block: int | str = "latest") -> tuple[Any, ...]:
        out = await self.rpc.call("eth_call", self._call_params(fn, args, block))
        return self._decode(fn, out)

    async def schedule(self) -> tuple[str, int, int, int]:
        """(mode, start block, round length, window) as deployed."""
        names = ("mode", "startBlock", "roundLength", "window")
        outs = await self.rpc.batch(
            [("eth_call", self._call_params(n, (), "latest")) for n in names]
        )
        mode, start, length, window = (
            self._decode(n, o)[0] for n, o in zip(names, outs, strict=True)
        )
        return MODES.get(int(mode), f"unknown({mode})"), int(start), int(length), int(window)

    async def nodes(self, nodes: list[bytes], block: int | str) -> dict[bytes, NodeKeys]:
        """The registered keys of these nodes at `block` (unregistered or unusable: left out)."""
        if not nodes:
            return {}
        outs = await self.rpc.batch(
            [("eth_call", self._call_params("nodeOf", ("0x" + n.hex(),), block)) for n in nodes]
        )
        found: dict[bytes, NodeKeys] = {}
        for node, out in zip(nodes, outs, strict=True):
            registered_at, public_key, vrf_key = self._decode("nodeOf", out)
            if int(registered_at) == 0:
                continue
            try:
                found[node] = NodeKeys(int(registered_at), compress(public_key), compress(vrf_key))
            except ValueError:
                continue  # cannot happen for keys the board accepted; never a candidate then
        return found

    async def used_before(self, definite_hash: bytes, from_block: int, to_block: int) -> bool:
        """Was `definite_hash` recorded as used in blocks [from_block, to_block]? Read from the
        `DefiniteHashUsed` logs, not from state at an old block: a node that prunes old state,
        or was restarted from a state dump, still has the logs."""
        logs = await self.rpc.call(
            "eth_getLogs",
            [
                {
                    "address": self.address,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(to_block),
                    "topics": [self.used_topic, None, "0x" + definite_hash.hex()],
                }
            ],
        )
        if not isinstance(logs, list):
            raise ChainError(f"eth_getLogs answered {type(logs).__name__}, not a list")
        return any(not log.get("removed") for log in logs)

    async def definite_hash_of(self, round: int, block: int | str = "latest") -> bytes:
        """The definite hash the board fixed for `round` (zero while nobody submitted); once
        set it never changes, so "latest" is as good as any block after it."""
        return bytes((await self.call("definiteHashOf", round, block=block))[0])

    async def submission_count(self, round: int, node: str, block: int | str = "latest") -> int:
        return int((await self.call("submissions", round, node, block=block))[0])

    # -- logs ----------------------------------------------------------------------------------
    async def submissions(
        self, round: int, from_block: int, to_block: int
    ) -> list[BoardSubmission]:
        """Every `Submitted` log of `round` in [from_block, to_block], in chain order."""
        logs = await self.rpc.call(
            "eth_getLogs",
            [
                {
                    "address": self.address,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(to_block),
                    "topics": [self.submitted_topic, "0x" + round.to_bytes(32, "big").hex()],
                }
            ],
        )
        if not isinstance(logs, list):
            raise ChainError(f"eth_getLogs answered {type(logs).__name__}, not a list")
        out: list[tuple[int, int, BoardSubmission]] = []
        for log in logs:
            if log.get("removed"):
                continue
            topics = log["topics"]
            node = bytes.fromhex(topics[2][2:])[12:]
            definite, payload, _count = abi_decode(
                ["bytes32", "bytes", "uint32"], bytes.fromhex(log["data"][2:])
            )
            number = hex_int(log["blockNumber"])
            sub = BoardSubmission(node, bytes(definite), bytes(payload), number)
            out.append((number, hex_int(log["logIndex"]), sub))
        out.sort(key=lambda item: (item[0], item[1]))
        return [sub for _, _, sub in out]

    # -- call data of the agent's own transactions ---------------------------------------------
    def register_data(self, public_key64: bytes, vrf_key64: bytes, vrf_key_proof: bytes) -> bytes:
        return encode_call(
            self.artifact.function("register"), public_key64, vrf_key64, vrf_key_proof
        )

    def selection_data(self, round: int, definite_hash: bytes, signature: bytes) -> bytes:
        return encode_call(
            self.artifact.function("submitSelection"), round, definite_hash, signature
        )

    def proof_data(self, round: int, proof: bytes) -> bytes:
        return encode_call(self.artifact.function("submitProof"), round, proof)


def vrf_key_digest(chain_id: int, board: str, node: str) -> bytes:
    """What the VRF key signs at registration: keccak256(tag || chainid || board || node), as the
    contract's abi.encodePacked builds it."""
    return keccak256(
        VRF_KEY_TAG
        + chain_id.to_bytes(32, "big")
        + bytes.fromhex(board.removeprefix("0x"))
        + bytes.fromhex(node.removeprefix("0x"))
    )
