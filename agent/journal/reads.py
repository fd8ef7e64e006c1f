"""Reading the journal: entries above a sink's watermark, the newest ones of a device's sensor
(for the oracle), and its statistics. Nothing read leaves before it is durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from agent.journal.base import JournalFile


@dataclass(frozen=True)
class JournalEntry:
    """One stored observation as sinks and the oracle see it."""

    seq: int
    device_id: str
    sensor: str
    created_at: float  # the gateway's clock when the entry was journaled
    envelope: bytes


@dataclass(frozen=True)
class JournalStats:
    """A snapshot of the journal. `bytes` is envelope bytes plus ROW_OVERHEAD_BYTES per row."""

    entries: int
    bytes: int
    oldest_created_at: float | None  # of the entry with the lowest sequence
    last_seq: int  # the highest sequence ever appended (0 if none)
    backlog: dict[str, int]  # per sink, entries with seq > that sink's cursor


class JournalReads(JournalFile):
    """The journal's reading calls (in its thread)."""

    # -- reading -----------------------------------------------------------------------------

    def read_after(self, sink: str, after_seq: int, limit: int) -> list[JournalEntry]:
        """Up to `limit` entries with seq > after_seq, in sequence order."""
        self._cursor_of(sink)
        if limit < 1:
            raise ValueError(f"limit {limit!r} must be at least 1")
        with self._guard(f"read for {sink!r}") as conn:
            rows = conn.execute(
                "SELECT seq, device_id, sensor, created_at, envelope FROM entries "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        if rows:
            self._durable_upto(int(rows[-1][0]))
        return [JournalEntry(*row) for row in rows]

    def _one(self, row: tuple[int, str, str, float, bytes] | None) -> JournalEntry | None:
        if row is None:
            return None
        self._durable_upto(int(row[0]))
        return JournalEntry(*row)

    @property
    def last_seq(self) -> int:
        """The sequence of the newest appended entry (0 for none)."""
        return self._last_seq

    def read_tail(self, sink: str, after_seq: int, limit: int) -> tuple[list[JournalEntry], int]:
        """read_after plus the newest sequence at the same moment: a reader that got no entry
        and sees `last_seq == after_seq` has read everything appended so far."""
        return self.read_after(sink, after_seq, limit), self._last_seq

    def cursor(self, sink: str) -> int:
        """The sink's acknowledged watermark (0 before its first ack)."""
        return self._cursor_of(sink)

    def latest(self, device_id: str, sensor: str) -> JournalEntry | None:
        """The newest stored entry for that device's sensor, if any is still kept."""
        with self._guard(f"read latest {device_id}/{sensor}") as conn:
            row = conn.execute(
                "SELECT seq, device_id, sensor, created_at, envelope FROM entries "
                "WHERE device_id = ? AND sensor = ? ORDER BY seq DESC LIMIT 1",
                (device_id, sensor),
            ).fetchone()
        return self._one(row)

    def latest_each(self, keys: Sequence[tuple[str, str]]) -> list[JournalEntry]:
        """The newest kept entry of each (device, sensor) that has one, in the order asked."""
        found = (self.latest(device_id, sensor) for device_id, sensor in keys)
        return [e for e in found if e is not None]

    def entry(self, seq: int) -> JournalEntry | None:
        """The stored entry with gateway sequence `seq`, if it is still kept."""
        with self._guard(f"read entry {seq}") as conn:
            row = conn.execute(
                "SELECT seq, device_id, sensor, created_at, envelope FROM entries WHERE seq = ?",
                (seq,),
            ).fetchone()
        return self._one(row)

    def latest_at(self, device_id: str, sensor: str, created_at: float) -> JournalEntry | None:
        """The newest kept entry for that device's sensor journaled at or before `created_at`."""
        with self._guard(f"read {device_id}/{sensor} at {created_at}") as conn:
            row = conn.execute(
                "SELECT seq, device_id, sensor, created_at, envelope FROM entries "
                "WHERE device_id = ? AND sensor = ? AND created_at <= ? ORDER BY seq DESC LIMIT 1",
                (device_id, sensor, created_at),
            ).fetchone()
        return self._one(row)

    def sensors_of(self, device_id: str) -> list[str]:
        """The sensors of a device that have kept entries, sorted."""
        with self._guard(f"read sensors of {device_id}") as conn:
            rows = conn.execute(
                "SELECT DISTINCT sensor FROM entries WHERE device_id = ? ORDER BY sensor",
                (device_id,),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def stats(self) -> JournalStats:
        with self._guard("read stats") as conn:
            row = conn.execute(
                "SELECT seq, created_at FROM entries ORDER BY seq LIMIT 1"
            ).fetchone()
            first = None if row is None else int(row[0])
            backlog = {
                s: self._count_after(conn, acked, first) for s, acked in self._cursors.items()
            }
        return JournalStats(
            entries=self._entries,
            bytes=self._bytes,
            oldest_created_at=None if row is None else float(row[1]),
            last_seq=self._last_seq,
            backlog=backlog,
        )

    def _count_after(self, conn: sqlite3.Connection, seq: int, first: int | None) -> int:
        """Entries with a sequence above `seq`. Appends number entries without gaps and the
        bounds remove runs from the oldest end, so the kept entries are normally one run from
        `first` to the last sequence: then the count is arithmetic (a count(*) reads every page,
        half a second per million entries, all that time holding up the journal's thread). If
        the entry count says there is a hole, count the rows."""
        if first is None:
            return 0
        if self._entries == self._last_seq - first + 1:
            return max(0, self._last_seq - max(seq, first - 1))
        return int(conn.execute("SELECT count(*) FROM entries WHERE seq > ?", (seq,)).fetchone()[0])
