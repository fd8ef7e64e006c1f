"""The journal's upkeep as a component: enforce its size and age bounds every few seconds and
log one stats line a minute (the operator's heartbeat in journald)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.component import Health
from agent.errors import JournalError
from agent.journal import Journal, JournalStats
from agent.logs import event
from agent.metrics import Metrics

log = logging.getLogger("agent.runtime")


class JournalUpkeep:
    name = "journal"

    def __init__(
        self,
        journal: Journal,
        metrics: Metrics,
        *,
        bridge_up: Callable[[], bool],
        every: float = 10.0,
        stats_every: int = 6,
    ) -> None:
        self.journal = journal
        self.metrics = metrics
        self.bridge_up = bridge_up
        self.every = every
        self.stats_every = stats_every
        self.ready = asyncio.Event()
        self.last: JournalStats | None = None
        self.failing: str | None = None

    async def run(self) -> None:
        self.ready.set()
        rounds = 0
        while True:
            await asyncio.sleep(self.every)
            rounds += 1
            try:
                await self.journal.enforce_bounds()
                if rounds % self.stats_every == 0:
                    self.last = await self.journal.stats()
                    self._log_stats(self.last)
                self.failing = None
            except JournalError as exc:  # e.g. a full disk: retried next round
                self.failing = str(exc)[:200]
                event(log, "journal_maintenance_failed", logging.ERROR, error=str(exc))

    def _log_stats(self, st: JournalStats) -> None:
        m = self.metrics
        event(
            log,
            "stats",
            signed=m.get("observations_signed"),
            delivered=m.get("observations_delivered"),
            rejected=m.get("frames_rejected"),
            journal_entries=st.entries,
            journal_bytes=st.bytes,
            backlog=st.backlog.get("bridge", 0),
            upstream="up" if self.bridge_up() else "down",
        )

    async def stop(self, grace: float = 0.0) -> None:
        """Nothing to finish: bounds are enforced again at the next start."""

    def health(self) -> Health:
        return Health("degraded" if self.failing else "up", {"error": self.failing})


__all__ = ["JournalUpkeep"]
