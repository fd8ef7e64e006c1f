"""Contract events that become commands ([[downlink.events]]): each declared event of a
configured contract, followed through the chain watcher's log subscription, is queued as a
command once, also across agent restarts.

Once: the command id is derived from the log (transaction hash and log index) and the store
records each log it queued (`handled_events`), in the same transaction as the command. Catch-up:
the store keeps, per rule, the height up to which logs were handled; at start the logs from
there to the head are fetched (eth_getLogs) before the live feed is read, and a log delivered
by both is queued once. Logs of a reorged-out block (`removed`) are counted, not undone: a
command already sent cannot be unsent (wait for confirmations on the contract's side).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from agent.attest.eip712 import keccak256
from agent.chainclient.rpc import RpcClient, hex_int
from agent.chainclient.subscribe import ChainWatcher, Feed
from agent.component import Health
from agent.config.downlink import EventRule
from agent.downlink.eventabi import EventSpec
from agent.downlink.requests import CommandRefused
from agent.downlink.service import Downlink
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import NAME_RE

REQUESTER = "contract-events"
_INT64 = 2**63


def _arg(value: Any) -> int | str:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise ValueError(f"{value} does not fit a command argument (int64)")
        return value
    if isinstance(value, str):
        return value  # an address, 0x-lowercase
    if isinstance(value, bytes):
        text = value.rstrip(b"\0").decode("ascii", "replace")
        if NAME_RE.match(text):
            return text
        raise ValueError("a bytes field that is not a label (1-32 of A-Z a-z 0-9 _ . : -)")
    raise ValueError(f"a {type(value).__name__} field cannot be a command argument")


class ContractCommands:
    """One feed per rule, registered on the watcher when built (before it runs)."""

    name = "downlink-events"

    def __init__(
        self,
        downlink: Downlink,
        rules: tuple[EventRule, ...],
        *,
        rpc: RpcClient,
        watcher: ChainWatcher,
        metrics: Metrics,
        logger: logging.Logger | None = None,
    ) -> None:
        self.downlink = downlink
        self.rpc = rpc
        self.watcher = watcher
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.downlink.events")
        self.rlog = RateLimitedLog(self.log)
        self.rules: list[tuple[EventRule, EventSpec, Feed[dict[str, Any]], str]] = []
        for i, rule in enumerate(rules):
            spec = EventSpec.parse(rule.event)
            feed = watcher.logs(address=rule.contract, topics=[spec.topic])
            self.rules.append((rule, spec, feed, f"events_cursor:{i}:{rule.contract}:{spec.topic}"))
        self.ready = asyncio.Event()
        self.queued = 0
        self._stopping = asyncio.Event()

    async def _cursor(self, key: str) -> int | None:
        v = await self.downlink.store.meta(key)
        return None if v is None else int(v)

    async def _advance(self, key: str, height: int) -> None:
        now = await self._cursor(key)
        if now is None or height > now:
            await self.downlink.store.set_meta(key, str(height))

    async def handle(self, rule: EventRule, spec: EventSpec, log: dict[str, Any]) -> None:
        where = f"{log.get('transactionHash')}:{log.get('logIndex')}"
        if log.get("removed"):
            self.metrics.inc("contract_events_refused", reason="removed")
            event(self.log, "contract_event_removed", logging.WARNING, tx_log=where)
            return
        try:
            values = spec.decode(log)
            if rule.device is not None:
                device = rule.device
            else:
                assert rule.device_from is not None
                raw = values[rule.device_from]
                device = raw.rstrip(b"\0").decode("ascii", "replace")
                if not NAME_RE.match(device):
                    raise ValueError(f"{rule.device_from} does not hold a device id")
            args: dict[str, int | str] = dict(rule.args)
            for k, field in rule.args_from:
                args[k] = _arg(values[field])
        except ValueError as exc:
            self.metrics.inc("contract_events_refused", reason="bad_event")
            self.rlog.event(
                (rule.contract, "bad_event"),
                "contract_event_refused",
                logging.WARNING,
                tx_log=where,
                reason="bad_event",
                detail=str(exc)[:200],
            )
            return
        cid = "e" + keccak256(where.encode()).hex()[:24]
        try:
            stored = await self.downlink.submit(
                REQUESTER,
                device,
                rule.action,
                args,
                rule.ttl_s,
                command_id=cid,
                event_key=where,
                trusted=True,
            )
        except CommandRefused as exc:
            self.metrics.inc("contract_events_refused", reason=exc.reason)
            self.rlog.event(
                (rule.contract, exc.reason),
                "contract_event_refused",
                logging.WARNING,
                tx_log=where,
                reason=exc.reason,
                detail=exc.detail,
            )
            return
        self.queued += 1
        event(
            self.log,
            "contract_event_command",
            tx_log=where,
            id=stored.command_id,
            device=device,
            action=rule.action,
        )

    async def _catch_up(self) -> None:
        latest = hex_int(await self.rpc.call("eth_blockNumber", []))
        for rule, spec, _, key in self.rules:
            cursor = await self._cursor(key)
            if cursor is None:  # first start: events from now on
                await self._advance(key, latest)
                continue
            if cursor >= latest:
                continue
            found = await self.rpc.call(
                "eth_getLogs",
                [
                    {
                        "address": rule.contract,
                        "topics": [spec.topic],
                        "fromBlock": hex(cursor + 1),
                        "toBlock": hex(latest),
                    }
                ],
            )
            logs = found if isinstance(found, list) else []
            for log in logs:
                await self.handle(rule, spec, log)
            event(
                self.log,
                "contract_events_caught_up",
                contract=rule.contract,
                blocks=latest - cursor,
                logs=len(logs),
            )
            await self._advance(key, latest)

    async def _follow(
        self, rule: EventRule, spec: EventSpec, feed: Feed[dict[str, Any]], key: str
    ) -> None:
        while True:
            log = await feed.get()
            await self.handle(rule, spec, log)
            n = log.get("blockNumber")
            if isinstance(n, str) and not log.get("removed"):
                await self._advance(key, hex_int(n) - 1)  # that block's later logs may follow

    async def run(self) -> None:
        await self.downlink.store.open()
        await self.watcher.connected.wait()  # its subscription started: the catch-up overlaps it
        await self._catch_up()
        self.ready.set()
        tasks = [asyncio.create_task(self._follow(*r)) for r in self.rules]
        try:
            await self._stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    async def stop(self, grace: float = 0.3) -> None:
        self._stopping.set()

    def health(self) -> Health:
        return Health(
            "up" if self.ready.is_set() else "starting",
            {"rules": len(self.rules), "queued": self.queued},
        )


__all__ = ["ContractCommands"]
