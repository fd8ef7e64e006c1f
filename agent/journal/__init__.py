"""Durable outbox of signed observations: sqlite in WAL mode, bounded by size and age.

Observations are committed here before any sink sees them; each sink reads in gateway-sequence
order and acknowledges a watermark, so whatever was not acknowledged is delivered again.

Gateway sequences have no gaps and are never reused: a batch's numbers are the next ones after
the newest entry, assigned, signed and inserted in the journal's thread in one call, and they
exist nowhere else until the insert has committed (a failed or interrupted append leaves no
trace, so its numbers are simply assigned again). Nothing read from the journal leaves it before
it is durable: with ``synchronous = "normal"`` a reader syncs the write-ahead log (one fsync for
everything committed so far) before it is handed an entry it has not seen durable, so after a
power cut the journal still holds every sequence anyone outside has seen, and numbering resumes
after it. Undelivered entries removed by ``overflow = "drop-oldest"`` leave a record of their
range in the same transaction (`pending_drops`), which the bridge announces upstream.

Threading, enforced by structure: `Journal` (used as ``async with Journal(...) as journal``) owns
one worker thread; the sqlite connection is opened in that thread (``check_same_thread=True``, so
a call from any other thread raises) and every awaitable method runs there, one at a time. The
synchronous core (`JournalCore`, agent/journal/core.py over reads.py and base.py) is private to
this package. One process writes a journal file; `read_device_counter` and
`read_newest_created_at` (readonly.py) open it read-only from another process.

The package's modules: schema (tables, limits, errors), base (the file, sequences, durability),
reads, core (appends, acks, bounds), bounds (what the bounds remove), drops (drop records and
their log line), counters (device replay windows), readonly (other processes' reads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from agent.errors import JournalError
from agent.journal.core import JournalCore
from agent.journal.drops import DropRecord, PruneReport
from agent.journal.readonly import read_device_counter, read_newest_created_at
from agent.journal.reads import JournalEntry, JournalStats
from agent.journal.schema import ROW_OVERHEAD_BYTES, Overflow
from agent.model import Observation
from agent.replaywindow import DEFAULT_REPLAY_WINDOW, ReplayWindow
from agent.threadowner import ThreadOwner

__all__ = [
    "ROW_OVERHEAD_BYTES",
    "DropRecord",
    "Journal",
    "JournalEntry",
    "JournalStats",
    "Overflow",
    "PruneReport",
    "read_device_counter",
    "read_newest_created_at",
]


class Journal(ThreadOwner):
    """The agent's durable outbox, awaitable from the event loop.

    ``async with Journal(path, sinks=[...]) as journal`` starts the journal's one worker thread,
    opens (or recovers) the sqlite file in it, and on exit closes the file and ends the thread.
    Every method runs in that thread, one call at a time, in the order they were awaited; the
    connection and the thread are held here and nowhere else. `open()` and `close()` are the
    same two steps for an owner whose lifetime is not one block (the runtime); the thread and
    those steps are ThreadOwner's (agent/threadowner.py), shared with the small sqlite stores.
    """

    def __init__(
        self,
        path: Path,
        *,
        sinks: Sequence[str],
        synchronous: Literal["normal", "full"] = "normal",
        max_bytes: int = 256 * 2**20,
        max_age_s: float = 7 * 86400,
        overflow: Overflow = "pause",
        replay_window: int = DEFAULT_REPLAY_WINDOW,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__("journal")
        self._core = JournalCore(
            path,
            sinks=sinks,
            synchronous=synchronous,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            overflow=overflow,
            replay_window=replay_window,
            clock=clock,
            logger=logger,
        )

    @property
    def path(self) -> Path:
        return self._core.path

    def _thread_open(self) -> None:
        self._core.open()

    def _thread_close(self) -> None:
        self._core.close()

    def _not_open(self) -> JournalError:
        return JournalError(
            f"journal {self.path} is not open; use `async with journal` or await open() first"
        )

    # -- writing -----------------------------------------------------------------------------

    async def next_sequences(self, n: int) -> range:
        """The sequences the next append of n observations must carry (nothing is reserved:
        prefer append_with, which numbers, builds and appends in one call)."""
        return await self._call(self._core.next_sequences, n)

    async def append(self, observations: Sequence[Observation]) -> None:
        """Store a batch in one transaction, making room first according to the bounds; the
        batch must carry next_sequences(len(batch)). Raises JournalHeld (policy pause),
        JournalFull (policy reject-new) or JournalError (disk full, read-only, damaged)."""
        await self._call(self._core.append, observations)

    async def sync(self) -> int:
        """Make everything committed durable; returns the newest durable sequence. A sink
        that hands out observations it got from the pipeline (not read from the journal)
        calls this first when they are above the last value it got."""
        return await self._call(self._core.sync)

    async def pending_drops(self) -> list[DropRecord]:
        """Drop records (overflow = drop-oldest) not yet announced upstream, oldest first."""
        return await self._call(self._core.pending_drops)

    async def drop_announced(self, first_seq: int) -> None:
        """Mark the drop record that starts at `first_seq` as announced."""
        await self._call(self._core.drop_announced, first_seq)

    async def drops(self) -> list[tuple[DropRecord, bool]]:
        """Every kept drop record and whether it was announced."""
        return await self._call(self._core.drops)

    @property
    def last_seq(self) -> int:
        """The newest appended sequence, read from the loop without a thread hop (an int the
        journal's thread replaces after each commit)."""
        return self._core.last_seq

    @property
    def drops_recorded(self) -> int:
        """Grows when a drop record is written (cheap to poll from the loop)."""
        return self._core.drops_recorded

    async def append_with(
        self, count: int, make: Callable[[range], list[Observation]]
    ) -> tuple[int, list[Observation]]:
        """Number the next `count` observations, call `make(sequences)` IN THE JOURNAL'S THREAD
        to build (sign) them, and append them: one thread hop for the whole batch, and nothing
        signed leaves before it is committed (so a failure leaves no gap). Returns the newest
        sequence before the batch (for sinks that check continuity) and the observations."""
        return await self._call(self._core.append_with, count, make)

    async def ack(self, sink: str, upto_seq: int) -> None:
        """Persist that `sink` delivered everything up to `upto_seq`. Lower values are ignored."""
        await self._call(self._core.ack, sink, upto_seq)

    async def enforce_bounds(self) -> PruneReport:
        """Apply the size and age bounds (see JournalCore.enforce_bounds for the policy)."""
        return await self._call(self._core.enforce_bounds)

    # -- reading -----------------------------------------------------------------------------

    async def read_after(self, sink: str, after_seq: int, limit: int) -> list[JournalEntry]:
        """Up to `limit` entries with seq > after_seq, in sequence order."""
        return await self._call(self._core.read_after, sink, after_seq, limit)

    async def read_tail(
        self, sink: str, after_seq: int, limit: int
    ) -> tuple[list[JournalEntry], int]:
        """read_after plus the newest sequence at the same moment (one hop): a reader that got
        no entry and sees `last_seq == after_seq` has read everything appended so far."""
        return await self._call(self._core.read_tail, sink, after_seq, limit)

    async def cursor(self, sink: str) -> int:
        """The sink's acknowledged watermark (0 before its first ack)."""
        return await self._call(self._core.cursor, sink)

    @property
    def replay_window(self) -> int:
        """How many counters each device's replay window keeps (journal.replay_window)."""
        return self._core.replay_window

    async def counter_windows(self) -> dict[str, ReplayWindow]:
        """Counter key -> the replay window of the counters journaled under it."""
        return await self._call(self._core.counter_windows)

    async def last_counters(self) -> dict[str, int]:
        """Counter key -> the highest counter journaled under it (kept when entries are pruned)."""
        return await self._call(self._core.last_counters)

    async def forget_counters(self, keys: Sequence[str]) -> dict[str, int]:
        """Remove the replay windows kept under `keys`; returns the last counter of each."""
        return await self._call(self._core.forget_counters, keys)

    async def latest(self, device_id: str, sensor: str) -> JournalEntry | None:
        """The newest stored entry for that device's sensor, if any is still kept."""
        return await self._call(self._core.latest, device_id, sensor)

    async def latest_each(self, keys: Sequence[tuple[str, str]]) -> list[JournalEntry]:
        """The newest kept entry of each (device, sensor) that has one, in one hop."""
        return await self._call(self._core.latest_each, keys)

    async def entry(self, seq: int) -> JournalEntry | None:
        """The stored entry with gateway sequence `seq`, if it is still kept."""
        return await self._call(self._core.entry, seq)

    async def latest_at(
        self, device_id: str, sensor: str, created_at: float
    ) -> JournalEntry | None:
        """The newest kept entry for that device's sensor journaled at or before `created_at`."""
        return await self._call(self._core.latest_at, device_id, sensor, created_at)

    async def sensors_of(self, device_id: str) -> list[str]:
        """The sensors of a device that have kept entries, sorted."""
        return await self._call(self._core.sensors_of, device_id)

    async def stats(self) -> JournalStats:
        return await self._call(self._core.stats)
