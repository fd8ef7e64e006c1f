"""The journal's file: opening or recovering it, its in-memory state, gateway sequences and their
durability, and the transaction helpers the reading and writing parts share. One thread only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from agent.errors import JournalError
from agent.journal.drops import DropLog
from agent.journal.schema import (
    CACHE_KIB,
    META_PRUNED_UPTO,
    META_SEQ_MARK,
    OVERFLOWS,
    ROW_OVERHEAD_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    SEQ_LIMIT,
    WAL_SIZE_LIMIT,
    Overflow,
    journal_error,
    upgrades,
)
from agent.replaywindow import MAX_REPLAY_WINDOW, ReplayWindow


class JournalFile:
    """The sqlite connection and what the journal knows of its file. Opened in `Journal`'s
    worker thread, whose connection refuses every other thread; JournalReads and JournalCore
    build on it."""

    def __init__(
        self,
        path: Path,
        *,
        sinks: Sequence[str],
        synchronous: Literal["normal", "full"],
        max_bytes: int,
        max_age_s: float,
        overflow: Overflow,
        replay_window: int,
        clock: Callable[[], float],
        logger: logging.Logger | None,
    ) -> None:
        # No defaults here: Journal's signature is the one place they are written.
        if not 1 <= replay_window <= MAX_REPLAY_WINDOW:
            raise ValueError(f"replay_window {replay_window!r} must be 1 to {MAX_REPLAY_WINDOW}")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous {synchronous!r} must be 'normal' or 'full'")
        if overflow not in OVERFLOWS:
            raise ValueError(f"overflow {overflow!r} must be one of {', '.join(OVERFLOWS)}")
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
        self._replay_window = replay_window
        self._clock = clock
        self._log = logger if logger is not None else logging.getLogger("agent.journal")
        self._conn: sqlite3.Connection | None = None
        # In-memory state, recovered at open() and changed only after a successful COMMIT.
        self._entries = 0
        self._bytes = 0
        self._last_seq = 0
        self._seq_floor = 0  # numbering continues above this (last_seq, or an old block mark)
        self._durable_seq = 0  # every entry up to here is on stable storage
        self._cursors: dict[str, int] = {}
        # counter key -> replay window, as committed (agent/journal/counters.py)
        self._windows: dict[str, ReplayWindow] = {}
        self._drop_log = DropLog(self._log)
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
        self._drop_log.flush()
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
        if first + n - 1 > SEQ_LIMIT:
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

    # -- helpers ---------------------------------------------------------------------------

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise JournalError(
                    f"journal {self._path}: sqlite refused WAL mode (got {mode!r}); put "
                    "journal.path on a local filesystem"
                )
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._error("open", exc) from exc
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self._path} has schema version {version}, newer than this agent's "
                f"{SCHEMA_VERSION}; run the newer agent or move the file aside"
            )
        with self._write("create schema") as c:
            for statement in SCHEMA:
                c.execute(statement)
            for statement in upgrades(version):
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
        self._last_seq = max(int(max_seq), meta.get(META_PRUNED_UPTO, 0))
        # A journal from before gapless numbering may have handed out numbers up to its mark.
        self._seq_floor = max(meta.get(META_SEQ_MARK, 0), self._last_seq)
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
        with self._guard(action) as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            try:
                conn.rollback()
            except sqlite3.Error as exc:
                self._log.error("event=journal_rollback_failed path=%s error=%s", self._path, exc)

    def _error(self, action: str, exc: sqlite3.Error) -> JournalError:
        return journal_error(self._path, action, exc)
