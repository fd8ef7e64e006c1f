"""Device counters in the journal: under each counter key (agent.frame.counter_key), the replay
window of the counters accepted (agent/replaywindow.py), written in the same transaction as the
observations that carry them, so a restart neither re-admits a counter nor refuses an unseen one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from agent.frame import counter_key
from agent.journal.schema import COUNTER_BIAS
from agent.model import Observation
from agent.replaywindow import ReplayWindow, after_accepting

# `counter` is the window's high mark (what `pair` continues an enrolled device above);
# `window_size` and `window` its bits, NULL in rows written before windows (all spent).
_UPSERT_WINDOW = (
    "INSERT INTO device_counters (device_id, counter, window_size, window) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (device_id) DO UPDATE SET counter = excluded.counter, "
    "window_size = excluded.window_size, window = excluded.window"
)


def fold_batch(
    windows: Mapping[str, ReplayWindow], batch: Sequence[Observation], size: int
) -> dict[str, ReplayWindow]:
    """The windows of the counter keys a batch touches, with its counters marked seen (the
    pipeline checked them against the same windows; folding is order-free)."""
    changed: dict[str, ReplayWindow] = {}
    for o in batch:
        r = o.reading
        key = counter_key(r.device_id, r.transport, r.auth)
        changed[key] = after_accepting(changed.get(key, windows.get(key)), r.counter, size)
    return changed


def write_windows(conn: sqlite3.Connection, windows: Mapping[str, ReplayWindow]) -> None:
    """Inside the append's transaction."""
    conn.executemany(
        _UPSERT_WINDOW,
        [(k, w.high - COUNTER_BIAS, w.size, w.seen_bytes()) for k, w in windows.items()],
    )


def read_windows(conn: sqlite3.Connection, size: int) -> dict[str, ReplayWindow]:
    """Every kept window, in windows of `size` counters (agent/replaywindow.py: resized)."""
    rows = conn.execute("SELECT device_id, counter, window_size, window FROM device_counters")
    return {
        str(d): ReplayWindow.stored(
            int(c) + COUNTER_BIAS,
            None if n is None else int(n),
            None if bits is None else bytes(bits),
            size,
        )
        for d, c, n, bits in rows
    }


def forget_counters(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, int]:
    """Inside a transaction: remove the counters kept under `keys`; returns the last counter
    of each removed."""
    removed: dict[str, int] = {}
    for k in keys:
        row = conn.execute(
            "SELECT counter FROM device_counters WHERE device_id = ?", (k,)
        ).fetchone()
        if row is not None:
            conn.execute("DELETE FROM device_counters WHERE device_id = ?", (k,))
            removed[k] = int(row[0]) + COUNTER_BIAS
    return removed
