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
synchronous core `_JournalCore` is private to this module. One process writes a journal file;
`read_device_counter` and `read_newest_created_at` open it read-only from another process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar, TypeVarTuple

from agent.errors import JournalBatchTooLarge, JournalError, JournalFull, JournalHeld
from agent.frame import counter_key
from agent.model import Observation

# Estimated cost of a row beyond its envelope (seq, ids, counter, timestamp, index entry).
# max_bytes bounds envelope bytes + this per row: a logical size, not the file size (sqlite
# reuses freed pages but does not shrink the file).
ROW_OVERHEAD_BYTES = 64
SCHEMA_VERSION = 1

# Device counters are uint64 but sqlite INTEGER is signed 64-bit: store counter - 2**63,
# which keeps the order (so max() still works) and fits every uint64.
_COUNTER_BIAS = 2**63
_SEQ_LIMIT = 2**63 - 1
# The WAL file keeps its largest size after a burst unless told otherwise.
_WAL_SIZE_LIMIT = 32 * 2**20
# sqlite's page cache for the connection (default 2,000 KiB, all of it filled within seconds at
# 1,000 readings/s). Appends touch a few pages at the tables' ends and reads follow them; the
# rest comes from the OS page cache. 512 KiB: ~1.5 MB less resident (bench/RESULTS.md, memory).
_CACHE_KIB = 512

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        sensor TEXT NOT NULL,
        counter INTEGER NOT NULL,
        created_at REAL NOT NULL,
        envelope BLOB NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS entries_device_sensor_seq
        ON entries (device_id, sensor, seq)""",
    """CREATE TABLE IF NOT EXISTS device_counters (
        device_id TEXT PRIMARY KEY,
        counter INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS sink_cursors (
        sink TEXT PRIMARY KEY,
        acked_seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # Ranges of undelivered entries removed by overflow = "drop-oldest", kept (delivered = 0)
    # until the bridge has announced them upstream, then as history until max_age.
    """CREATE TABLE IF NOT EXISTS drops (
        first_seq INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        dropped_at INTEGER NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0
    )""",
)

# meta key: the highest sequence ever removed, so last_seq survives a journal pruned empty.
# (Journals written before sequences became gapless also hold "seq_mark", the end of a block of
# numbers reserved ahead; numbering resumes above it once, so none of them is ever reused.)
_META_SEQ_MARK = "seq_mark"
_META_PRUNED_UPTO = "pruned_upto"
Overflow = Literal["pause", "drop-oldest", "reject-new"]
_OVERFLOWS = ("pause", "drop-oldest", "reject-new")

_INSERT_ENTRY = (
    "INSERT INTO entries (seq, device_id, sensor, counter, created_at, envelope) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_COUNTER = (
    "INSERT INTO device_counters (device_id, counter) VALUES (?, ?) "
    "ON CONFLICT (device_id) DO UPDATE SET counter = max(counter, excluded.counter)"
)
_UPSERT_META_MAX = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)"
)


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


@dataclass(frozen=True)
class DropRecord:
    """A contiguous range of undelivered gateway sequences removed by overflow = drop-oldest."""

    first_seq: int
    last_seq: int
    dropped_at: int  # unix seconds, the gateway's clock when they were removed


@dataclass(frozen=True)
class PruneReport:
    """What one bounds enforcement removed."""

    delivered_removed: int
    undelivered_dropped: int
    dropped_seq_range: tuple[int, int] | None  # first and last undelivered sequence dropped


@dataclass(frozen=True)
class _Removal:
    """A contiguous run of entries (in sequence order) chosen for deletion."""

    count: int = 0
    freed: int = 0
    first_seq: int = 0
    last_seq: int = 0
    by_age: bool = False
    by_bytes: bool = False

    @property
    def reason(self) -> str:
        reasons = (("max_age", self.by_age), ("max_bytes", self.by_bytes))
        return ",".join(name for name, applies in reasons if applies)


_NOTHING = _Removal()
DROP_LOG_INTERVAL_S = 60.0  # at most one journal_drop line per minute while drops go on


@dataclass
class _DropSummary:
    """Drops not logged yet: their count, sequence span, reasons and commits."""

    first_seq: int
    last_seq: int = 0
    count: int = 0
    commits: int = 0
    reasons: set[str] = field(default_factory=set)

    def add(self, r: _Removal) -> None:
        self.count += r.count
        self.last_seq = r.last_seq
        self.commits += 1
        self.reasons.update(r.reason.split(","))


class _JournalCore:
    """The journal's SQL and in-memory state. Only `Journal`'s worker thread calls it: it is
    opened there, and its connection refuses every other thread."""

    def __init__(
        self,
        path: Path,
        *,
        sinks: Sequence[str],
        synchronous: Literal["normal", "full"],
        max_bytes: int,
        max_age_s: float,
        overflow: Overflow,
        clock: Callable[[], float],
        logger: logging.Logger | None,
    ) -> None:
        # No defaults here: Journal's signature is the one place they are written.
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous {synchronous!r} must be 'normal' or 'full'")
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow {overflow!r} must be one of {', '.join(_OVERFLOWS)}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes {max_bytes!r} must be positive")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s {max_age_s!r} must be positive")
        names = list(sinks)
        if any(not isinstance(s, str) or not s for s in names) or len(set(names)) != len(names):
            raise ValueError(f"sinks {names!r} must be distinct non-empty names")
        self._path = Path(path)
        self._sinks = tuple(names)
        self._synchronous = synchronous
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._overflow = overflow
        self._clock = clock
        self._log = logger if logger is not None else logging.getLogger(__name__)
        self._conn: sqlite3.Connection | None = None
        # In-memory state, recovered at open() and changed only after a successful COMMIT.
        self._entries = 0
        self._bytes = 0
        self._last_seq = 0
        self._seq_floor = 0  # numbering continues above this (last_seq, or an old block mark)
        self._durable_seq = 0  # every entry up to here is on stable storage
        self._cursors: dict[str, int] = {}
        self._drops_pending: _DropSummary | None = None
        self._drop_logged_at = -math.inf
        self.drops_recorded = 0  # grows with each drop record written; polled from the loop

    @property
    def path(self) -> Path:
        return self._path

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create or recover the journal. Calling it on an open journal does nothing."""
        if self._conn is not None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(
                f"journal {self._path}: cannot create its directory: {exc}; "
                "check journal.path and the agent's permissions"
            ) from exc
        try:
            # Opened in the calling thread (Journal's worker), which alone may use it.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        self._conn = conn
        try:
            self._prepare(conn)
            self._recover(conn)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close. Safe to call twice."""
        self._flush_drops(time.monotonic())
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            # Nothing is lost: the WAL is replayed at the next open.
            self._log.warning("event=journal_checkpoint_failed path=%s error=%s", self._path, exc)
        finally:
            conn.close()

    # -- sequences and durability -----------------------------------------------------------

    def next_sequences(self, n: int) -> range:
        """The sequences the next append of n observations must carry: the n numbers after the
        newest one journaled. Nothing is reserved: until an append commits them, the same
        numbers are handed out again (nothing signed with them has left the journal's thread)."""
        if n < 0:
            raise ValueError(f"cannot number {n} observations")
        self._db()
        first = self._seq_floor + 1
        if first + n - 1 > _SEQ_LIMIT:
            raise JournalError(f"journal {self._path}: gateway sequences exhausted")
        return range(first, first + n)

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    def sync(self, *, force: bool = False) -> int:
        """Make everything committed so far durable (one fsync of the write-ahead log, which
        is what synchronous = "full" does at every commit); returns the durable sequence.
        Without `force` it does nothing when every entry is known durable already."""
        if self._durable_seq >= self._last_seq and not force:
            return self._durable_seq
        last = self._last_seq
        if self._synchronous != "full":
            try:
                fd = os.open(f"{self._path}-wal", os.O_RDONLY)
            except FileNotFoundError:
                fd = -1  # checkpointed into the main file, which the checkpoint synced
            except OSError as exc:
                raise JournalError(f"journal {self._path}: sync failed: {exc}") from exc
            if fd >= 0:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    raise JournalError(f"journal {self._path}: sync failed: {exc}") from exc
                finally:
                    os.close(fd)
        self._durable_seq = last
        return last

    def _durable_upto(self, seq: int) -> None:
        """Before an entry with this sequence leaves the journal: make it durable."""
        if seq > self._durable_seq:
            self.sync()

    # -- writing -----------------------------------------------------------------------------

    def append(self, observations: Sequence[Observation]) -> None:
        """Store a batch in one transaction, making room first according to the bounds.

        The batch must carry exactly `next_sequences(len(batch))` (in any order): numbers
        without gaps, each assigned once; sinks read above a watermark, so an entry appended
        below one would never be delivered.
        """
        if not observations:
            return
        self._db()
        batch = sorted(observations, key=lambda o: o.gateway_sequence)
        expected = self.next_sequences(len(batch))
        for obs, seq in zip(batch, expected, strict=True):
            if obs.gateway_sequence != seq:
                raise JournalError(
                    f"journal {self._path}: gateway sequence {obs.gateway_sequence} is not the "
                    f"next one ({seq}); sign observations with next_sequences, append each once"
                )
        incoming = sum(len(o.envelope) + ROW_OVERHEAD_BYTES for o in batch)
        if incoming > self._max_bytes:
            raise JournalBatchTooLarge(
                f"journal {self._path}: a batch of {len(batch)} observations ({incoming} bytes) "
                f"is larger than journal.max_bytes = {self._max_bytes}; raise journal.max_bytes"
            )
        created_at = self._clock()
        rows = [
            (
                o.gateway_sequence,
                o.reading.device_id,
                o.reading.sensor,
                o.reading.counter - _COUNTER_BIAS,
                created_at,
                o.envelope,
            )
            for o in batch
        ]
        counters: dict[str, int] = {}
        for o in batch:
            r = o.reading
            key = counter_key(r.device_id, r.transport, r.auth)
            counters[key] = max(counters.get(key, 0), r.counter)

        delivered = dropped = _NOTHING
        rejected = False
        with self._write(f"append {len(batch)} observations") as conn:
            if self._bytes + incoming > self._max_bytes:
                target = self._max_bytes - incoming
                delivered, dropped = self._make_room(conn, cutoff=None, target=target)
                rejected = self._bytes - delivered.freed - dropped.freed > target
            if not rejected:
                conn.executemany(_INSERT_ENTRY, rows)
                conn.executemany(
                    _UPSERT_COUNTER, [(d, c - _COUNTER_BIAS) for d, c in counters.items()]
                )
        self._removed(delivered)
        self._removed(dropped)
        self._log_drop(dropped)
        self.drops_recorded += dropped.count > 0
        if rejected:
            error = JournalHeld if self._overflow == "pause" else JournalFull
            then = (
                "intake pauses until the sinks deliver"
                if self._overflow == "pause"
                else "the batch is refused"
            )
            raise error(
                f"journal {self._path} is full: journal.max_bytes = {self._max_bytes} and "
                f"{self._bytes} bytes are held by undelivered observations, which "
                f"journal.overflow = {self._overflow!r} keeps; the batch of "
                f"{len(batch)} ({incoming} bytes) was not stored and {then}. Check that the "
                "sinks deliver, raise journal.max_bytes, or set journal.overflow = "
                "'drop-oldest' (dropped ranges are announced upstream)"
            )
        self._entries += len(rows)
        self._bytes += incoming
        self._last_seq = self._seq_floor = batch[-1].gateway_sequence
        if self._synchronous == "full":
            self._durable_seq = self._last_seq

    def append_with(
        self, count: int, make: Callable[[range], list[Observation]]
    ) -> tuple[int, list[Observation]]:
        """Number the next `count` observations, build them with `make` and append them;
        returns the newest sequence before the batch and the observations."""
        seqs = self.next_sequences(count)
        observations = make(seqs)
        previous = self._last_seq
        self.append(observations)
        return previous, observations

    def ack(self, sink: str, upto_seq: int) -> None:
        """Persist that `sink` delivered everything up to `upto_seq`. Lower values are ignored."""
        current = self._cursor_of(sink)
        if upto_seq <= current:
            return
        if upto_seq > self._last_seq:
            raise JournalError(
                f"journal {self._path}: sink {sink!r} acknowledged sequence {upto_seq} but the "
                f"last appended is {self._last_seq}"
            )
        with self._write(f"acknowledge {sink!r} up to {upto_seq}") as conn:
            conn.execute("UPDATE sink_cursors SET acked_seq = ? WHERE sink = ?", (upto_seq, sink))
        self._cursors[sink] = upto_seq

    def enforce_bounds(self) -> PruneReport:
        """Apply the size and age bounds; call it periodically (append only enforces size).

        Policy, in order:
        1. Entries every sink acknowledged ("delivered") older than max_age_s are removed, and
           delivered entries are removed oldest first while the journal is over max_bytes.
        2. Then, with overflow = "drop-oldest", undelivered entries are dropped oldest first
           while over max_bytes or older than max_age_s, one warning line says so and a drop
           record (see pending_drops) keeps their range until it was announced. With "pause"
           or "reject-new" undelivered entries are never dropped; append raises JournalHeld or
           JournalFull.
        3. Drop records already announced and older than max_age_s are forgotten.

        "Oldest" is sequence order; age removal stops at the first entry young enough, so after
        the clock steps back an old entry can wait behind a younger one.
        """
        cutoff = self._clock() - self._max_age_s
        with self._write("enforce bounds") as conn:
            delivered, dropped = self._make_room(conn, cutoff=cutoff, target=self._max_bytes)
            conn.execute("DELETE FROM drops WHERE delivered = 1 AND dropped_at < ?", (cutoff,))
        self._removed(delivered)
        self._removed(dropped)
        self._log_drop(dropped)
        self.drops_recorded += dropped.count > 0
        return PruneReport(
            delivered_removed=delivered.count,
            undelivered_dropped=dropped.count,
            dropped_seq_range=(dropped.first_seq, dropped.last_seq) if dropped.count else None,
        )

    def _make_room(
        self, conn: sqlite3.Connection, *, cutoff: float | None, target: int
    ) -> tuple[_Removal, _Removal]:
        """Delete (inside the caller's transaction) what the policy removes to get the journal
        to `target` bytes and rid of entries created before `cutoff`."""
        upto = self._delivered_upto()
        delivered = self._plan(conn, after=0, upto=upto, cutoff=cutoff, target=target, freed=0)
        self._delete(conn, delivered)
        dropped = _NOTHING
        if self._overflow == "drop-oldest":
            dropped = self._plan(
                conn, after=upto, upto=None, cutoff=cutoff, target=target, freed=delivered.freed
            )
            self._delete(conn, dropped)
            if dropped.count:
                conn.execute(
                    "INSERT INTO drops (first_seq, last_seq, dropped_at) VALUES (?, ?, ?)",
                    (dropped.first_seq, dropped.last_seq, int(self._clock())),
                )
        return delivered, dropped

    def _plan(
        self,
        conn: sqlite3.Connection,
        *,
        after: int,
        upto: int | None,
        cutoff: float | None,
        target: int,
        freed: int,
    ) -> _Removal:
        """The run of entries in (after, upto], from the oldest, that is too old or must go to
        bring the journal (already `freed` bytes lighter) down to `target` bytes."""
        sql = "SELECT seq, created_at, length(envelope) FROM entries WHERE seq > ?"
        params: tuple[int, ...] = (after,)
        if upto is not None:
            sql += " AND seq <= ?"
            params = (after, upto)
        over = self._bytes - freed > target
        old = cutoff is not None
        if not (over or old):
            return _NOTHING
        count = gone = first = last = 0
        by_age = by_bytes = False
        cur = conn.execute(sql + " ORDER BY seq", params)
        try:
            for seq, created_at, size in cur:
                too_old = cutoff is not None and created_at < cutoff
                over = self._bytes - freed - gone > target
                if not (too_old or over):
                    break
                by_age = by_age or too_old
                by_bytes = by_bytes or (over and not too_old)
                first = first or seq
                last = seq
                count += 1
                gone += size + ROW_OVERHEAD_BYTES
        finally:
            cur.close()
        return _Removal(count, gone, first, last, by_age, by_bytes)

    def _delete(self, conn: sqlite3.Connection, removal: _Removal) -> None:
        if not removal.count:
            return
        conn.execute(
            "DELETE FROM entries WHERE seq BETWEEN ? AND ?", (removal.first_seq, removal.last_seq)
        )
        conn.execute(_UPSERT_META_MAX, (_META_PRUNED_UPTO, removal.last_seq))

    def _removed(self, removal: _Removal) -> None:
        self._entries -= removal.count
        self._bytes -= removal.freed

    def pending_drops(self) -> list[DropRecord]:
        """Drop records not yet announced upstream, oldest first; durable before returned."""
        with self._guard("read drop records") as conn:
            rows = conn.execute(
                "SELECT first_seq, last_seq, dropped_at FROM drops WHERE delivered = 0 "
                "ORDER BY first_seq"
            ).fetchall()
        if rows:
            self.sync(force=True)  # a drop record may be the newest commit, with no entry
        return [DropRecord(int(a), int(b), int(t)) for a, b, t in rows]

    def drop_announced(self, first_seq: int) -> None:
        """The drop record starting at `first_seq` reached upstream; kept as history."""
        with self._write(f"mark drop {first_seq} announced") as conn:
            conn.execute("UPDATE drops SET delivered = 1 WHERE first_seq = ?", (first_seq,))

    def drops(self) -> list[tuple[DropRecord, bool]]:
        """Every kept drop record and whether it was announced, oldest first."""
        with self._guard("read drop records") as conn:
            rows = conn.execute(
                "SELECT first_seq, last_seq, dropped_at, delivered FROM drops ORDER BY first_seq"
            ).fetchall()
        return [(DropRecord(int(a), int(b), int(t)), bool(d)) for a, b, t, d in rows]

    def _log_drop(self, dropped: _Removal) -> None:
        """The first drop after a quiet minute is logged at once; the drops of the following
        commits (a full journal drops on every append) are added up into one summary line, once
        a minute while they last and at close, so the log shows every dropped range without a
        line per commit."""
        now = time.monotonic()
        pending = self._drops_pending
        if dropped.count:
            if pending is None and now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
                self._drop_logged_at = now
                self._log.warning(
                    "event=journal_drop policy=drop-oldest dropped=%d seq_from=%d seq_to=%d "
                    "reason=%s",
                    dropped.count,
                    dropped.first_seq,
                    dropped.last_seq,
                    dropped.reason,
                )
                return
            if pending is None:
                pending = self._drops_pending = _DropSummary(first_seq=dropped.first_seq)
            pending.add(dropped)
        if pending is not None and now - self._drop_logged_at >= DROP_LOG_INTERVAL_S:
            self._flush_drops(now)

    def _flush_drops(self, now: float) -> None:
        pending, self._drops_pending = self._drops_pending, None
        if pending is None:
            return
        self._drop_logged_at = now
        self._log.warning(
            "event=journal_drop policy=drop-oldest dropped=%d seq_from=%d seq_to=%d reason=%s "
            "commits=%d",
            pending.count,
            pending.first_seq,
            pending.last_seq,
            ",".join(sorted(pending.reasons)),
            pending.commits,
        )

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

    def last_counters(self) -> dict[str, int]:
        """Device id -> the highest counter journaled for it (kept when entries are pruned)."""
        with self._guard("read device counters") as conn:
            rows = conn.execute("SELECT device_id, counter FROM device_counters").fetchall()
        return {str(d): int(c) + _COUNTER_BIAS for d, c in rows}

    def forget_counters(self, keys: Sequence[str]) -> dict[str, int]:
        """Remove the last counters kept under `keys` (`devices reset-counter`): the next frame
        under each key may start anywhere. Returns the counters removed."""
        with self._write(f"reset {len(keys)} device counter(s)") as conn:
            removed: dict[str, int] = {}
            for k in keys:
                row = conn.execute(
                    "SELECT counter FROM device_counters WHERE device_id = ?", (k,)
                ).fetchone()
                if row is not None:
                    conn.execute("DELETE FROM device_counters WHERE device_id = ?", (k,))
                    removed[k] = int(row[0]) + _COUNTER_BIAS
        return removed

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
            row = conn.execute("SELECT created_at FROM entries ORDER BY seq LIMIT 1").fetchone()
            backlog = {s: self._count_after(conn, acked) for s, acked in self._cursors.items()}
        return JournalStats(
            entries=self._entries,
            bytes=self._bytes,
            oldest_created_at=None if row is None else float(row[0]),
            last_seq=self._last_seq,
            backlog=backlog,
        )

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _count_after(conn: sqlite3.Connection, seq: int) -> int:
        return int(conn.execute("SELECT count(*) FROM entries WHERE seq > ?", (seq,)).fetchone()[0])

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise JournalError(
                    f"journal {self._path}: sqlite refused WAL mode (got {mode!r}); put "
                    "journal.path on a local filesystem"
                )
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self._path} has schema version {version}, newer than this agent's "
                f"{SCHEMA_VERSION}; run the newer agent or move the file aside"
            )
        with self._write("create schema") as c:
            for statement in _SCHEMA:
                c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            c.executemany(
                "INSERT OR IGNORE INTO sink_cursors (sink, acked_seq) VALUES (?, 0)",
                [(s,) for s in self._sinks],
            )

    def _recover(self, conn: sqlite3.Connection) -> None:
        with self._guard("recover state") as c:
            meta = {str(k): int(v) for k, v in c.execute("SELECT key, value FROM meta")}
            cursors = {
                str(s): int(a) for s, a in c.execute("SELECT sink, acked_seq FROM sink_cursors")
            }
            count, envelope_bytes, max_seq = c.execute(
                "SELECT count(*), coalesce(sum(length(envelope)), 0), coalesce(max(seq), 0) "
                "FROM entries"
            ).fetchone()
        self._entries = int(count)
        self._bytes = int(envelope_bytes) + ROW_OVERHEAD_BYTES * self._entries
        self._last_seq = max(int(max_seq), meta.get(_META_PRUNED_UPTO, 0))
        # A journal from before gapless numbering may have handed out numbers up to its mark.
        self._seq_floor = max(meta.get(_META_SEQ_MARK, 0), self._last_seq)
        self._cursors = {s: cursors.get(s, 0) for s in self._sinks}
        # What this process finds is made durable before anything of it is read (after a
        # crash the WAL may hold commits that never reached the disk).
        self._durable_seq = 0
        self.sync()

    def _delivered_upto(self) -> int:
        """Entries with seq <= this were acknowledged by every sink (all, without sinks)."""
        return min(self._cursors.values(), default=self._last_seq)

    def _cursor_of(self, sink: str) -> int:
        self._db()
        try:
            return self._cursors[sink]
        except KeyError:
            raise JournalError(
                f"journal {self._path}: unknown sink {sink!r}; configured sinks are "
                f"{', '.join(self._sinks) or '(none)'}"
            ) from None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"journal {self._path} is not open; use `async with journal` first")
        return self._conn

    @contextmanager
    def _guard(self, action: str) -> Iterator[sqlite3.Connection]:
        """Turn sqlite errors into JournalError, rolling back whatever was left open."""
        conn = self._db()
        try:
            yield conn
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._error(action, exc) from exc
        except BaseException:
            self._rollback(conn)
            raise

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed if the block succeeds, rolled back otherwise."""
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._error(action, exc) from exc
        except BaseException:
            self._rollback(conn)
            raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.rollback()
            except sqlite3.Error as exc:
                self._log.error("event=journal_rollback_failed path=%s error=%s", self._path, exc)

    def _error(self, action: str, exc: sqlite3.Error) -> JournalError:
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if name == "SQLITE_FULL" or "is full" in text:
            hint = (
                "the disk holding it is full: free space there or lower journal.max_bytes; "
                "the journal works again once there is room"
            )
        elif name.startswith("SQLITE_READONLY") or "readonly" in text:
            hint = (
                "it is read-only: the agent needs write access to the file and to its "
                "directory, where sqlite keeps the -wal and -shm files"
            )
        elif name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            hint = (
                "the file is damaged or is not a journal: move it aside and restart; "
                "undelivered observations in it will not be sent"
            )
        elif name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            hint = "another process holds it locked: run one agent per journal file"
        else:
            hint = "check the file and its disk"
        return JournalError(f"journal {self._path}: {action} failed: {text}; {hint}")


_Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")


class Journal:
    """The agent's durable outbox, awaitable from the event loop.

    ``async with Journal(path, sinks=[...]) as journal`` starts the journal's one worker thread,
    opens (or recovers) the sqlite file in it, and on exit closes the file and ends the thread.
    Every method runs in that thread, one call at a time, in the order they were awaited; the
    connection and the thread are held here and nowhere else. `open()` and `close()` are the
    same two steps for an owner whose lifetime is not one block (the runtime).
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
        clock: Callable[[], float] = time.time,
        logger: logging.Logger | None = None,
    ) -> None:
        self._core = _JournalCore(
            path,
            sinks=sinks,
            synchronous=synchronous,
            max_bytes=max_bytes,
            max_age_s=max_age_s,
            overflow=overflow,
            clock=clock,
            logger=logger,
        )
        self._worker: ThreadPoolExecutor | None = None

    @property
    def path(self) -> Path:
        return self._core.path

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Start the thread and create or recover the journal in it. Does nothing if open;
        calls awaited meanwhile queue behind the opening in the thread."""
        if self._worker is not None:
            return
        worker = ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._worker = worker
        try:
            await asyncio.get_running_loop().run_in_executor(worker, self._core.open)
        except BaseException:
            if self._worker is worker:
                self._worker = None
            # Also when cancelled while opening: close whatever the thread still opens.
            worker.submit(self._core.close)
            worker.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Checkpoint and close the file, then end the thread. Safe to call twice."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(worker, self._core.close)
        except BaseException:
            worker.shutdown(wait=False)  # the thread finishes the close by itself
            raise
        worker.shutdown(wait=True)  # idle by now: calls run in order and the close was last

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """Run `fn(*args)` in the journal's thread (the only way anything reaches sqlite)."""
        worker = self._worker
        if worker is None:
            raise JournalError(
                f"journal {self.path} is not open; use `async with journal` or await open() first"
            )
        return await asyncio.get_running_loop().run_in_executor(worker, fn, *args)

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
        """Apply the size and age bounds (see _JournalCore.enforce_bounds for the policy)."""
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

    async def last_counters(self) -> dict[str, int]:
        """Device id -> the highest counter journaled for it (kept when entries are pruned)."""
        return await self._call(self._core.last_counters)

    async def forget_counters(self, keys: Sequence[str]) -> dict[str, int]:
        """Remove the last counters kept under `keys`; returns those removed."""
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


def read_device_counter(path: Path | str, device_id: str) -> int | None:
    """The last counter journaled for a device, read by another process (`pair` tells a
    re-provisioned device where to continue). Read-only; None when there is none."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute(
                "SELECT counter FROM device_counters WHERE device_id = ?", (device_id,)
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise JournalError(f"cannot read device counters from {p}: {exc}") from None
    return None if row is None else int(row[0]) + _COUNTER_BIAS


def read_newest_created_at(path: Path) -> float | None:
    """When the newest kept entry was journaled, read by another process (`doctor` compares it
    with the clock). Read-only; None when there is no entry or the file cannot be read."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute("SELECT max(created_at) FROM entries").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return None if row is None or row[0] is None else float(row[0])
