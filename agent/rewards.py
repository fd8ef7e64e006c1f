"""The masternode's side of the RewardPool: checking in once per epoch while it is in service
(the RewardCheckIn component), and what it can claim and claiming it (`masternode rewards`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from agent.chainclient.contractclient import ContractClient
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.component import Health
from agent.errors import ChainError
from agent.logs import event
from agent.masternode import RegistryClient
from agent.metrics import Metrics

ALL_EPOCHS = 2**64  # claim(upto) is capped at the current epoch by the contract


@dataclass(frozen=True)
class RewardStatus:
    address: str
    pool: str
    epoch: int
    epoch_blocks: int
    reward_per_epoch: int  # wei
    checked_in: bool  # in the current epoch
    in_service_now: int  # masternodes checked in for the current epoch so far
    claimable: int  # wei
    from_epoch: int
    to_epoch: int  # claimable covers [from_epoch, to_epoch)
    pool_balance: int  # wei

    def describe(self) -> list[str]:
        return [
            f"reward pool   {self.pool} ({self.pool_balance} wei held)",
            f"reward        {self.reward_per_epoch} wei per epoch of {self.epoch_blocks} blocks, "
            "split equally among the masternodes in service",
            f"epoch         {self.epoch}: {'checked in' if self.checked_in else 'not checked in'}"
            f" ({self.in_service_now} masternode(s) so far)",
            f"claimable     {self.claimable} wei for epochs {self.from_epoch}..{self.to_epoch - 1}"
            if self.to_epoch > self.from_epoch
            else "claimable     0 wei (no finished epoch since the last claim)",
        ]


class RewardsClient(ContractClient):
    """One RewardPool, for this gateway's key."""

    def __init__(self, rpc: RpcClient, sender: TxSender, pool: str) -> None:
        super().__init__(rpc, sender, pool, load_artifact("RewardPool"))

    async def status(self, address: str | None = None) -> RewardStatus:
        who = address or self.sender.key.address
        (epoch,) = await self.call("currentEpoch")
        (epoch_blocks,) = await self.call("epochBlocks")
        (reward,) = await self.call("rewardPerEpoch")
        (checked,) = await self.call("checkedIn", epoch, who)
        (count,) = await self.call("inServiceCount", epoch)
        amount, lo, hi = await self.call("claimable", who, ALL_EPOCHS)
        bal = hex_int(await self.rpc.call("eth_getBalance", [self.address, "latest"]))
        return RewardStatus(
            who, self.address, epoch, epoch_blocks, reward, checked, count, amount, lo, hi, bal
        )

    async def check_in(self) -> dict[str, Any]:
        return await self.transact("checkIn")

    async def claim(self, upto_epoch: int = ALL_EPOCHS) -> dict[str, Any]:
        return await self.transact("claim", upto_epoch)


class RewardCheckIn:
    """Checks this masternode in once per epoch while the registry counts it active (in
    service); an epoch it could not check in for earns nothing. Checks every
    `check_interval_s` seconds."""

    name = "rewards"

    def __init__(
        self,
        client: RewardsClient,
        registry: RegistryClient,
        *,
        check_interval_s: float = 15.0,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.registry = registry
        self.check_interval = check_interval_s
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.rewards")
        self.ready = asyncio.Event()
        self.epoch: int | None = None
        self.checked_in: bool | None = None
        self.active: bool | None = None
        self.claimable: int | None = None
        self.failing: str | None = None

    async def check_in_if_due(self) -> bool:
        st = await self.client.status()
        self.epoch, self.checked_in, self.claimable = st.epoch, st.checked_in, st.claimable
        if st.checked_in:
            return False
        (self.active,) = await self.registry.call("isActive", self.client.sender.key.address)
        if not self.active:
            return False
        rc = await self.client.check_in()
        self.checked_in = True
        self.metrics.inc("reward_check_ins")
        event(self.log, "reward_checked_in", epoch=st.epoch, block=hex_int(rc["blockNumber"]))
        return True

    async def run(self) -> None:
        self.ready.set()
        while True:
            try:
                await self.check_in_if_due()
                self.failing = None
            except ChainError as exc:
                self.failing = str(exc)[:200]
                self.metrics.inc("reward_check_in_failed")
                event(self.log, "reward_check_in_failed", logging.WARNING, error=self.failing)
            await asyncio.sleep(self.check_interval)

    async def stop(self, grace: float = 0.5) -> None:
        """Nothing to finish: a missed check-in is retried within the epoch after a restart."""

    def health(self) -> Health:
        return Health(
            "degraded" if self.failing else "up",
            {
                "epoch": self.epoch,
                "checked_in": self.checked_in,
                "active": self.active,
                "claimable_wei": self.claimable,
                "error": self.failing,
            },
        )
