"""Undelivered entries the journal had to drop (overflow = "drop-oldest"): the records of their
ranges, kept until the bridge announced them upstream, and the one warning line that sums them up.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass, field

DROP_LOG_INTERVAL_S = 60.0  # at most one journal_drop line per minute while drops go on


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
class Removal:
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


NOTHING = Removal()


# -- the drops table (inside the journal's transactions, in its thread) ---------------------


def record_drop(conn: sqlite3.Connection, dropped: Removal, dropped_at: int) -> None:
    conn.execute(
        "INSERT INTO drops (first_seq, last_seq, dropped_at) VALUES (?, ?, ?)",
        (dropped.first_seq, dropped.last_seq, dropped_at),
    )


def unannounced(conn: sqlite3.Connection) -> list[DropRecord]:
    rows = conn.execute(
        "SELECT first_seq, last_seq, dropped_at FROM drops WHERE delivered = 0 ORDER BY first_seq"
    ).fetchall()
    return [DropRecord(int(a), int(b), int(t)) for a, b, t in rows]


def mark_announced(conn: sqlite3.Connection, first_seq: int) -> None:
    conn.execute("UPDATE drops SET delivered = 1 WHERE first_seq = ?", (first_seq,))


def every_drop(conn: sqlite3.Connection) -> list[tuple[DropRecord, bool]]:
    rows = conn.execute(
        "SELECT first_seq, last_seq, dropped_at, delivered FROM drops ORDER BY first_seq"
    ).fetchall()
    return [(DropRecord(int(a), int(b), int(t)), bool(d)) for a, b, t, d in rows]


def forget_announced(conn: sqlite3.Connection, before: float) -> None:
    """Announced drop records older than `before` are history no one needs any more."""
    conn.execute("DELETE FROM drops WHERE delivered = 1 AND dropped_at < ?", (before,))


# -- the warning line ------------------------------------------------------------------------


@dataclass
class _DropSummary:
    """Drops not logged yet: their count, sequence span, reasons and commits."""

    first_seq: int
    last_seq: int = 0
    count: int = 0
    commits: int = 0
    reasons: set[str] = field(default_factory=set)

    def add(self, r: Removal) -> None:
        self.count += r.count
        self.last_seq = r.last_seq
        self.commits += 1
        self.reasons.update(r.reason.split(","))


class DropLog:
    """The first drop after a quiet minute is logged at once; the drops of the following
    commits (a full journal drops on every append) are added up into one summary line, once
    a minute while they last and at close, so the log shows every dropped range without a
    line per commit."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._pending: _DropSummary | None = None
        self._logged_at = -math.inf

    def add(self, dropped: Removal) -> None:
        now = time.monotonic()
        pending = self._pending
        if dropped.count:
            if pending is None and now - self._logged_at >= DROP_LOG_INTERVAL_S:
                self._logged_at = now
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
                pending = self._pending = _DropSummary(first_seq=dropped.first_seq)
            pending.add(dropped)
        if pending is not None and now - self._logged_at >= DROP_LOG_INTERVAL_S:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the summary of drops not logged yet (at close, or once their minute is up)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._logged_at = time.monotonic() if now is None else now
        self._log.warning(
            "event=journal_drop policy=drop-oldest dropped=%d seq_from=%d seq_to=%d reason=%s "
            "commits=%d",
            pending.count,
            pending.first_seq,
            pending.last_seq,
            ",".join(sorted(pending.reasons)),
            pending.commits,
        )
