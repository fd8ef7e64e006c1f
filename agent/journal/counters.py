"""Device counters in the journal: the last counter accepted under each counter key, written in
the same transaction as the observations that carry it, so a restart refuses every replay."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from agent.frame import counter_key
from agent.journal.schema import COUNTER_BIAS
from agent.model import Observation

_UPSERT_COUNTER = (
    "INSERT INTO device_counters (device_id, counter) VALUES (?, ?) "
    "ON CONFLICT (device_id) DO UPDATE SET counter = max(counter, excluded.counter)"
)


def batch_counters(batch: Sequence[Observation]) -> dict[str, int]:
    """The highest counter of each counter key in a batch."""
    counters: dict[str, int] = {}
    for o in batch:
        r = o.reading
        key = counter_key(r.device_id, r.transport, r.auth)
        counters[key] = max(counters.get(key, 0), r.counter)
    return counters


def write_counters(conn: sqlite3.Connection, counters: dict[str, int]) -> None:
    """Inside the append's transaction."""
    conn.executemany(_UPSERT_COUNTER, [(d, c - COUNTER_BIAS) for d, c in counters.items()])


def read_counters(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT device_id, counter FROM device_counters").fetchall()
    return {str(d): int(c) + COUNTER_BIAS for d, c in rows}


def forget_counters(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, int]:
    """Inside a transaction: remove the counters kept under `keys`; returns those removed."""
    removed: dict[str, int] = {}
    for k in keys:
        row = conn.execute(
            "SELECT counter FROM device_counters WHERE device_id = ?", (k,)
        ).fetchone()
        if row is not None:
            conn.execute("DELETE FROM device_counters WHERE device_id = ?", (k,))
            removed[k] = int(row[0]) + COUNTER_BIAS
    return removed
