"""This node in the board's MasternodeRegistry: registered, active, and with the VRF key this
gateway key derives? Read before every transaction the board would refuse otherwise."""

from __future__ import annotations

import logging

from agent.chainclient.rpc import RpcClient
from agent.chainclient.tx import decode_result, encode_call
from agent.election.board import RegistryLogs
from agent.errors import RpcError
from agent.logs import event


class OwnStanding:
    """`await check()` reads this node's registry entry; `standing` is the last answer:
    active, inactive, not-a-masternode or foreign-vrf-key (each change logged once)."""

    def __init__(
        self,
        rpc: RpcClient,
        registry: RegistryLogs,
        node: str,
        vrf_public: bytes,
        log: logging.Logger,
    ) -> None:
        self.rpc = rpc
        self.registry = registry
        self.node = node
        self.vrf_public = vrf_public
        self.log = log
        self.standing: str | None = None

    async def check(self) -> bool:
        """Is this node an active masternode now, with the VRF key this gateway key derives?"""
        fn = self.registry.artifact.function("info")
        out = await self.rpc.call(
            "eth_call",
            [
                {"to": self.registry.address, "data": "0x" + encode_call(fn, self.node).hex()},
                "latest",
            ],
        )
        if isinstance(out, RpcError):
            raise out
        registered, active, vrf_key, *_ = decode_result(fn, bytes.fromhex(str(out)[2:]))
        if not registered:
            standing = "not-a-masternode"
        elif bytes(vrf_key) != self.vrf_public:
            standing = "foreign-vrf-key"
        else:
            standing = "active" if active else "inactive"
        if standing != self.standing:
            level = logging.INFO if standing == "active" else logging.WARNING
            event(
                self.log,
                "election_standing",
                level,
                node=self.node,
                registry=self.registry.address,
                standing=standing,
            )
            self.standing = standing
        return standing == "active"
