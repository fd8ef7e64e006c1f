"""The journal's synchronous core: appends with their device counters, acknowledgements, the
size and age bounds, and drop records. Only `Journal`'s thread calls it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from agent.errors import JournalBatchTooLarge, JournalError, JournalFull, JournalHeld
from agent.journal import counters
from agent.journal.bounds import Room, make_room
from agent.journal.drops import (
    NOTHING,
    DropRecord,
    PruneReport,
    Removal,
    every_drop,
    forget_announced,
    mark_announced,
    unannounced,
)
from agent.journal.reads import JournalReads
from agent.journal.schema import COUNTER_BIAS, INSERT_ENTRY, ROW_OVERHEAD_BYTES
from agent.model import Observation
from agent.replaywindow import ReplayWindow


class JournalCore(JournalReads):
    """The journal's SQL and in-memory state (JournalFile, JournalReads, and the writing calls
    here). Only `Journal`'s worker thread calls it: it is opened there, and its connection
    refuses every other thread."""

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
                o.reading.counter - COUNTER_BIAS,
                created_at,
                o.envelope,
            )
            for o in batch
        ]
        windows = counters.fold_batch(self._windows, batch, self._replay_window)

        delivered = dropped = NOTHING
        rejected = False
        with self._write(f"append {len(batch)} observations") as conn:
            if self._bytes + incoming > self._max_bytes:
                target = self._max_bytes - incoming
                delivered, dropped = self._make_room(conn, cutoff=None, target=target)
                rejected = self._bytes - delivered.freed - dropped.freed > target
            if not rejected:
                conn.executemany(INSERT_ENTRY, rows)
                counters.write_windows(conn, windows)
        self._removed(delivered)
        self._removed(dropped)
        self._drop_log.add(dropped)
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
        self._windows.update(windows)
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
            forget_announced(conn, cutoff)
        self._removed(delivered)
        self._removed(dropped)
        self._drop_log.add(dropped)
        self.drops_recorded += dropped.count > 0
        return PruneReport(
            delivered_removed=delivered.count,
            undelivered_dropped=dropped.count,
            dropped_seq_range=(dropped.first_seq, dropped.last_seq) if dropped.count else None,
        )

    def _make_room(
        self, conn: sqlite3.Connection, *, cutoff: float | None, target: int
    ) -> tuple[Removal, Removal]:
        """Delete (inside the caller's transaction) what the policy removes to get the journal
        to `target` bytes and rid of entries created before `cutoff` (agent/journal/bounds.py)."""
        room = Room(self._bytes, self._delivered_upto(), self._overflow == "drop-oldest")
        return make_room(conn, room, cutoff=cutoff, target=target, now=int(self._clock()))

    def _removed(self, removal: Removal) -> None:
        self._entries -= removal.count
        self._bytes -= removal.freed

    def pending_drops(self) -> list[DropRecord]:
        """Drop records not yet announced upstream, oldest first; durable before returned."""
        with self._guard("read drop records") as conn:
            records = unannounced(conn)
        if records:
            self.sync(force=True)  # a drop record may be the newest commit, with no entry
        return records

    def drop_announced(self, first_seq: int) -> None:
        """The drop record starting at `first_seq` reached upstream; kept as history."""
        with self._write(f"mark drop {first_seq} announced") as conn:
            mark_announced(conn, first_seq)

    def drops(self) -> list[tuple[DropRecord, bool]]:
        """Every kept drop record and whether it was announced, oldest first."""
        with self._guard("read drop records") as conn:
            return every_drop(conn)

    # -- device counters ---------------------------------------------------------------------

    def _recover(self, conn: sqlite3.Connection) -> None:
        super()._recover(conn)
        with self._guard("read device counters") as c:
            self._windows = counters.read_windows(c, self._replay_window)

    @property
    def replay_window(self) -> int:
        """How many counters a device's window keeps (journal.replay_window)."""
        return self._replay_window

    def counter_windows(self) -> dict[str, ReplayWindow]:
        """Counter key -> its replay window (kept when entries are pruned)."""
        self._db()
        return dict(self._windows)

    def last_counters(self) -> dict[str, int]:
        """Counter key -> the highest counter journaled under it."""
        self._db()
        return {k: w.high for k, w in self._windows.items()}

    def forget_counters(self, keys: Sequence[str]) -> dict[str, int]:
        """Remove the windows kept under `keys` (`devices reset-counter`): the next frame
        under each key may start anywhere. Returns the last counter of each removed."""
        with self._write(f"reset {len(keys)} device counter(s)") as conn:
            removed = counters.forget_counters(conn, keys)
        for k in keys:
            self._windows.pop(k, None)
        return removed
