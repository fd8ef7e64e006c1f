"""The masternode's side of the MasternodeRegistry: status (with its proof-of-service standing),
registration (collateral, VRF public key), heartbeats and withdrawal, through the chain client.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from agent.chainclient.contractclient import ContractClient
from agent.chainclient.contracts import Artifact, load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.component import Health
from agent.errors import ChainError
from agent.logs import event
from agent.metrics import Metrics


@dataclass(frozen=True)
class MasternodeStatus:
    address: str
    registry: str
    registered: bool
    active: bool
    vrf_public_key: bytes
    locked: int  # wei
    registered_at: int  # block
    last_heartbeat: int  # block
    block: int
    heartbeat_window: int  # blocks
    required_collateral: int  # wei
    standing: ServiceStandingInfo | None = None  # None: no ServiceStanding attached

    @property
    def in_service(self) -> bool | None:
        return None if self.standing is None else not self.standing.out

    def describe(self) -> list[str]:
        state = "active" if self.active else "inactive" if self.registered else "not registered"
        lines = [
            f"masternode    {self.address}",
            f"registry      {self.registry}",
            f"state         {state}",
            f"collateral    {self.required_collateral} wei required, {self.locked} wei locked",
        ]
        if self.registered:
            due = self.last_heartbeat + self.heartbeat_window
            lines += [
                f"vrf key       0x{self.vrf_public_key.hex()}",
                f"registered    block {self.registered_at}",
                f"heartbeat     block {self.last_heartbeat} (head {self.block}; "
                f"inactive after block {due})",
            ]
        if self.standing is not None:
            lines.append(f"service       {self.standing.describe()}")
        return lines


@dataclass(frozen=True)
class ServiceStandingInfo:
    """A masternode's proof-of-service standing in the ServiceStanding contract."""

    contract: str
    out: bool  # out of service: failed `fail_epochs` epochs in a row, not passed since
    streak: int  # failed epochs in a row
    last_failed: int  # epoch
    fail_epochs: int  # K
    epoch: int  # the current epoch

    def describe(self) -> str:
        state = "OUT OF SERVICE" if self.out else "in service"
        row = f"{self.streak} failed epoch(s) in a row (out at {self.fail_epochs})"
        last = f", last failed epoch {self.last_failed}" if self.streak else ""
        return f"{state}: {row}{last}; epoch {self.epoch} (standing {self.contract})"


class RegistryClient(ContractClient):
    """The MasternodeRegistry: status, register, heartbeat, withdraw."""

    def __init__(
        self, rpc: RpcClient, sender: TxSender, registry: str, artifact: Artifact | None = None
    ) -> None:
        super().__init__(rpc, sender, registry, artifact or load_artifact("MasternodeRegistry"))
        self.registry = registry

    async def status(self, address: str | None = None) -> MasternodeStatus:
        who = address or self.sender.key.address
        registered, active, vrf, locked, at, last = await self.call("info", who)
        (window,) = await self.call("heartbeatWindow")
        (required,) = await self.call("collateral")
        head = hex_int(await self.rpc.call("eth_blockNumber"))
        standing = await self.standing(who)
        return MasternodeStatus(
            who,
            self.registry,
            registered,
            active,
            bytes(vrf),
            locked,
            at,
            last,
            head,
            window,
            required,
            standing,
        )

    async def standing(self, address: str) -> ServiceStandingInfo | None:
        """The masternode's service standing, when the registry has a ServiceStanding."""
        (contract,) = await self.call("serviceStanding")
        if int(contract, 16) == 0:
            return None
        st = ContractClient(self.rpc, self.sender, contract, load_artifact("ServiceStanding"))
        out, streak, last_failed = await st.call("standing", address)
        (k,) = await st.call("failEpochs")
        (epoch,) = await st.call("currentEpoch")
        return ServiceStandingInfo(contract, out, streak, last_failed, k, epoch)

    async def register(self, vrf_public_key: bytes) -> dict[str, Any]:
        if len(vrf_public_key) != 33 or vrf_public_key[0] not in (2, 3):
            raise ChainError(
                "the VRF public key must be a 33-byte compressed secp256k1 point (0x02/0x03...)"
            )
        (required,) = await self.call("collateral")
        return await self.transact("register", vrf_public_key, value=required)

    async def heartbeat(self) -> dict[str, Any]:
        return await self.transact("heartbeat")

    async def withdraw(self) -> dict[str, Any]:
        return await self.transact("withdraw")


class HeartbeatTask:
    """Sends a heartbeat whenever `every_blocks` blocks passed since the last one (default: half
    the registry's window), checking every `check_interval_s` seconds."""

    name = "heartbeat"

    def __init__(
        self,
        client: RegistryClient,
        *,
        every_blocks: int = 0,
        check_interval_s: float = 15.0,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.every_blocks = every_blocks
        self.check_interval = check_interval_s
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.masternode")
        self._said_unregistered = False
        self.ready = asyncio.Event()
        self.registered: bool | None = None
        self.in_service: bool | None = None  # None: unknown or no ServiceStanding attached
        self.failing: str | None = None

    async def beat_if_due(self) -> bool:
        st = await self.client.status()
        self.registered = st.registered
        self.in_service = st.in_service
        if not st.registered:
            if not self._said_unregistered:
                self._said_unregistered = True
                event(
                    self.log,
                    "masternode_not_registered",
                    logging.WARNING,
                    address=st.address,
                    registry=st.registry,
                    hint="run `edgence-agent masternode register`",
                )
            return False
        self._said_unregistered = False
        every = self.every_blocks or max(1, st.heartbeat_window // 2)
        if st.block - st.last_heartbeat < every:
            return False
        rc = await self.client.heartbeat()
        self.metrics.inc("masternode_heartbeats")
        event(
            self.log,
            "masternode_heartbeat",
            block=hex_int(rc["blockNumber"]),
            was_active=st.active,
            last=st.last_heartbeat,
        )
        return True

    async def run(self) -> None:
        self.ready.set()
        while True:
            try:
                await self.beat_if_due()
                self.failing = None
            except ChainError as exc:
                self.failing = str(exc)[:200]
                self.metrics.inc("masternode_heartbeat_failed")
                event(
                    self.log, "masternode_heartbeat_failed", logging.WARNING, error=str(exc)[:200]
                )
            await asyncio.sleep(self.check_interval)

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: the next heartbeat is sent when it is due after a restart."""

    def health(self) -> Health:
        return Health(
            "degraded"
            if self.failing or self.registered is False or self.in_service is False
            else "up",
            {"registered": self.registered, "in_service": self.in_service, "error": self.failing},
        )
