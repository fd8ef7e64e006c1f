"""The elected committee's proof-of-service duty: in each epoch whose committee (posted on the
ElectionBoard, read through ServiceStanding) includes this node, probe every registered
masternode over the upstream broker once and submit the verdicts in one transaction.

Every node runs it; on a node not in the epoch's committee it only reads the chain. Answering
probes needs nothing of this module: the oracle and forwarding components do it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Protocol

from agent.chainclient.contractclient import ContractClient
from agent.chainclient.contracts import load_artifact
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.sender import TxSender
from agent.component import Health
from agent.errors import ChainError
from agent.logs import event
from agent.metrics import Metrics
from agent.serviceprobe import ProbeResult, submit_verdicts


class Prober(Protocol):
    async def probe(self, gateway: str) -> ProbeResult: ...


ProberFactory = Callable[[], AbstractAsyncContextManager[Prober]]


class ServiceDuty:
    """`await run()` until stopped. `done` maps each epoch this node submitted verdicts for to
    the transaction hash; `last` holds the last epoch's verdicts (gateway -> passed)."""

    name = "service-probe"

    def __init__(
        self,
        rpc: RpcClient,
        sender: TxSender,
        registry: str,
        prober: ProberFactory,
        *,
        check_interval_s: float = 5.0,
        concurrency: int = 16,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.rpc = rpc
        self.sender = sender
        self.me = sender.key.address.lower()
        self.registry = ContractClient(rpc, sender, registry, load_artifact("MasternodeRegistry"))
        self.make_prober = prober
        self.interval = check_interval_s
        self.concurrency = max(1, concurrency)
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("agent.serviceduty")
        self.standing: ContractClient | None = None
        self.done: dict[int, str] = {}
        self.last: dict[str, bool] = {}
        self.member_of: int | None = None  # the last epoch this node was on the committee of
        self.epoch: int | None = None
        self.failing: str | None = None
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    async def _standing(self) -> ContractClient | None:
        if self.standing is None:
            (addr,) = await self.registry.call("serviceStanding")
            if int(addr, 16) == 0:
                return None
            art = load_artifact("ServiceStanding")
            self.standing = ContractClient(self.rpc, self.sender, addr, art)
        return self.standing

    async def masternodes(self) -> list[str]:
        """Every registered masternode, in service or not (one out of service must be probed to
        come back), this one included."""
        (n,) = await self.registry.call("count")
        return [str((await self.registry.call("masternodeAt", i))[0]).lower() for i in range(n)]

    async def _probe_all(self, prober: Prober, nodes: list[str]) -> list[ProbeResult]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(node: str) -> ProbeResult:
            async with gate:
                return await prober.probe(node)

        return list(await asyncio.gather(*(one(n) for n in nodes)))

    async def serve_once(self, prober: Prober) -> int | None:
        """Probe and submit for the current epoch if this node is on its committee and has not
        yet; the epoch it submitted for, else None."""
        standing = await self._standing()
        if standing is None:
            return None
        epoch = int((await standing.call("currentEpoch"))[0])
        self.epoch = epoch
        if epoch in self.done:
            return None
        (member,) = await standing.call("isCommittee", epoch, self.me)
        if not member:
            return None
        self.member_of = epoch
        nodes = await self.masternodes()
        results = await self._probe_all(prober, nodes)
        (now,) = await standing.call("currentEpoch")
        if now > epoch + 1:  # verdicts are taken in the epoch and the next one only
            return None
        rc = await submit_verdicts(self.rpc, self.sender, standing.address, epoch, results)
        self.done[epoch] = str(rc["transactionHash"])
        self.last = {r.gateway: r.passed for r in results}
        failed = [r.gateway for r in results if not r.passed]
        self.metrics.inc("service_verdicts_submitted", len(results))
        event(
            self.log,
            "service_verdicts",
            epoch=epoch,
            probed=len(results),
            failed=",".join(failed) or None,
            tx=self.done[epoch],
            gas=hex_int(rc["gasUsed"]),
        )
        return epoch

    async def run(self) -> None:
        self._stop.clear()
        async with self.make_prober() as prober:
            self.ready.set()
            while not self._stop.is_set():
                try:
                    await self.serve_once(prober)
                    self.failing = None
                except ChainError as exc:
                    self.failing = str(exc)[:200]
                    self.metrics.inc("service_probe_failed")
                    event(self.log, "service_probe_failed", logging.WARNING, error=self.failing)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)

    async def stop(self, grace: float = 0.5) -> None:
        """Verdicts not yet sent are judged again by the next run, while the epoch lasts."""
        self._stop.set()

    def health(self) -> Health:
        failed = sum(1 for ok in self.last.values() if not ok)
        return Health(
            "degraded" if self.failing else "up",
            {
                "epoch": self.epoch,
                "committee_epoch": self.member_of,
                "verdicts_epoch": max(self.done) if self.done else None,
                "probed": len(self.last),
                "failed": failed,
                "error": self.failing,
            },
        )
