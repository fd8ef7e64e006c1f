"""The journal's sqlite file: its tables, the statements shared by its modules, its limits, and
what a sqlite error means to an operator."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from agent.errors import JournalError

# Estimated cost of a row beyond its envelope (seq, ids, counter, timestamp, index entry).
# max_bytes bounds envelope bytes + this per row: a logical size, not the file size (sqlite
# reuses freed pages but does not shrink the file).
ROW_OVERHEAD_BYTES = 64
SCHEMA_VERSION = 2

# Device counters are uint64 but sqlite INTEGER is signed 64-bit: store counter - 2**63,
# which keeps the order (so max() still works) and fits every uint64.
COUNTER_BIAS = 2**63
SEQ_LIMIT = 2**63 - 1
# The WAL file keeps its largest size after a burst unless told otherwise.
WAL_SIZE_LIMIT = 32 * 2**20
# sqlite's page cache for the connection (default 2,000 KiB, all of it filled within seconds at
# 1,000 readings/s). Appends touch a few pages at the tables' ends and reads follow them; the
# rest comes from the OS page cache. 512 KiB: ~1.5 MB less resident (bench/RESULTS.md, memory).
CACHE_KIB = 512

SCHEMA = (
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
    # counter: the highest accepted (biased); window_size, window: the replay window's bits
    # (agent/journal/counters.py), NULL for rows from version 1 (every counter up to it spent).
    """CREATE TABLE IF NOT EXISTS device_counters (
        device_id TEXT PRIMARY KEY,
        counter INTEGER NOT NULL,
        window_size INTEGER,
        window BLOB
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

# Statements that bring a journal of an older version (the key) up to the next one.
UPGRADES = {
    1: (
        "ALTER TABLE device_counters ADD COLUMN window_size INTEGER",
        "ALTER TABLE device_counters ADD COLUMN window BLOB",
    ),
}


def upgrades(version: int) -> list[str]:
    """What brings a journal of `version` to SCHEMA_VERSION (none for a new file: 0)."""
    if version == 0:
        return []
    return [s for v in range(version, SCHEMA_VERSION) for s in UPGRADES[v]]


# meta key: the highest sequence ever removed, so last_seq survives a journal pruned empty.
# (Journals written before sequences became gapless also hold "seq_mark", the end of a block of
# numbers reserved ahead; numbering resumes above it once, so none of them is ever reused.)
META_SEQ_MARK = "seq_mark"
META_PRUNED_UPTO = "pruned_upto"
Overflow = Literal["pause", "drop-oldest", "reject-new"]
OVERFLOWS = ("pause", "drop-oldest", "reject-new")

INSERT_ENTRY = (
    "INSERT INTO entries (seq, device_id, sensor, counter, created_at, envelope) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
UPSERT_META_MAX = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)"
)


def journal_error(path: Path, action: str, exc: sqlite3.Error) -> JournalError:
    """A sqlite error as a JournalError that says what to do about it."""
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
    return JournalError(f"journal {path}: {action} failed: {text}; {hint}")
