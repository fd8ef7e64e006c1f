"""The ElectionBoard contract as the agent sees it: views read with eth_call at a given block,
the `Submitted` logs of a round, and the call data of the agent's own transactions; and the
MasternodeRegistry's events (who may stand, with which VRF key) as `RegistryLogs`.
"""

from __future__ import annotations

from typing import Any

from eth_abi.abi import decode as abi_decode

from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.tx import decode_result, encode_call, event_topic
from agent.election.definite import keccak256
from agent.election.standing import RegistryEvent
from agent.election.tally import BoardSubmission
from agent.errors import ChainError, ElectionError, RpcError

MODES = {0: "paper", 1: "vrf"}


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

    async def timeouts(self) -> tuple[int, int]:
        """(leaderTimeout, fallbackTimeout) in blocks, as deployed."""
        (lead,) = await self.call("leaderTimeout")
        (fallback,) = await self.call("fallbackTimeout")
        return int(lead), int(fallback)

    async def committee_hash(self, round: int) -> bytes:
        return bytes((await self.call("committeeHash", round))[0])

    async def disputed(self, round: int) -> bool:
        return bool((await self.call("disputed", round))[0])

    async def may_report(self, node: str, block: int) -> bool:
        return bool((await self.call("mayReport", node, block))[0])

    async def registry(self) -> str:
        """The MasternodeRegistry whose active masternodes stand (immutable)."""
        return str((await self.call("registry"))[0]).lower()

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
    def selection_data(self, round: int, definite_hash: bytes, signature: bytes) -> bytes:
        return encode_call(
            self.artifact.function("submitSelection"), round, definite_hash, signature
        )

    def proof_data(self, round: int, proof: bytes) -> bytes:
        return encode_call(self.artifact.function("submitProof"), round, proof)

    def committee_data(self, round: int, elected: tuple[str, ...]) -> bytes:
        return encode_call(self.artifact.function("postCommittee"), round, list(elected))


def committee_hash(elected: tuple[str, ...]) -> bytes:
    """keccak256(abi.encodePacked(address[])): each address padded to 32 bytes."""
    return keccak256(b"".join(bytes.fromhex(a[2:]).rjust(32, b"\0") for a in elected))


def _logs(out: Any) -> list[dict[str, Any]]:
    if not isinstance(out, list):
        raise ChainError(f"eth_getLogs answered {type(out).__name__}, not a list")
    return [log for log in out if not log.get("removed")]


class RegistryLogs:
    """The MasternodeRegistry's events about some nodes, read as logs (no state at old blocks)."""

    def __init__(self, rpc: RpcClient, address: str, artifact: Artifact | None = None) -> None:
        self.rpc = rpc
        self.address = address.lower()
        self.artifact = artifact or load_artifact("MasternodeRegistry")
        self.topics = {
            event_topic(self.artifact.event(name)): kind
            for name, kind in (
                ("Registered", "registered"),
                ("Heartbeat", "heartbeat"),
                ("VrfKeyChanged", "key"),
                ("Withdrawn", "withdrawn"),
            )
        }
        self._window: int | None = None

    async def heartbeat_window(self) -> int:
        if self._window is None:
            fn = self.artifact.function("heartbeatWindow")
            data = "0x" + encode_call(fn).hex()
            out = await self.rpc.call("eth_call", [{"to": self.address, "data": data}, "latest"])
            if isinstance(out, RpcError):
                raise out
            raw = bytes.fromhex(str(out)[2:])
            if not raw:
                raise ElectionError(
                    f"no MasternodeRegistry at {self.address} (the board's registry): "
                    "check election.board"
                )
            self._window = int(decode_result(fn, raw)[0])
        return self._window

    async def events(self, nodes: list[bytes], cutoff: int) -> list[RegistryEvent]:
        """Every Registered, VrfKeyChanged and Withdrawn event of `nodes` up to `cutoff`, and
        their Heartbeat events of the last heartbeat window before it."""
        if not nodes:
            return []
        window = await self.heartbeat_window()
        who = ["0x" + n.rjust(32, b"\0").hex() for n in nodes]
        by_kind = {kind: topic for topic, kind in self.topics.items()}
        lasting = [by_kind["registered"], by_kind["key"], by_kind["withdrawn"]]
        queries = [
            (0, lasting),
            (max(0, cutoff - window), [by_kind["heartbeat"]]),
        ]
        outs = await self.rpc.batch(
            [
                (
                    "eth_getLogs",
                    [
                        {
                            "address": self.address,
                            "fromBlock": hex(lo),
                            "toBlock": hex(cutoff),
                            "topics": [topics, who],
                        }
                    ],
                )
                for lo, topics in queries
            ]
        )
        found: list[RegistryEvent] = []
        for out in outs:
            if isinstance(out, RpcError):
                raise out
            for log in _logs(out):
                kind = self.topics.get(log["topics"][0])
                if kind is None:
                    continue
                node = bytes.fromhex(log["topics"][1][2:])[12:]
                key: bytes | None = None
                data = bytes.fromhex(log["data"][2:])
                if kind == "registered":
                    key = bytes(abi_decode(["bytes", "uint256", "uint64"], data)[0])
                elif kind == "key":
                    key = bytes(abi_decode(["bytes"], data)[0])
                found.append(
                    RegistryEvent(
                        node,
                        kind,  # type: ignore[arg-type]
                        hex_int(log["blockNumber"]),
                        hex_int(log["logIndex"]),
                        key,
                    )
                )
        return found
