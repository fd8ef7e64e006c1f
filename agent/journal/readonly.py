"""What other processes read of a journal file (`pair`, `devices show`, `doctor`): read-only
connections that never write and never take the journal's thread."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.errors import JournalError
from agent.journal.schema import COUNTER_BIAS


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
    return None if row is None else int(row[0]) + COUNTER_BIAS


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
