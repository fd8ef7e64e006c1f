"""The downlink's durable queue: commands until they are answered or their TTL ends, each
device's downlink counter, and the contract events already turned into commands. A small sqlite
file of its own (agent/sqlitestore.py: WAL, synchronous=FULL, one thread), not the journal.

A command's counter is assigned once, in the same transaction that advances the device's
counter, so a resent command carries the same counter and no two commands ever share one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError
from agent.sqlitestore import Sql, SqliteStore


class DownlinkStoreError(AgentError):
    """The downlink store could not be read or written."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS commands(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    device TEXT NOT NULL,
    action TEXT NOT NULL,
    args TEXT NOT NULL,
    requester TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    counter INTEGER,
    state TEXT NOT NULL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS commands_open ON commands(state, device, seq);
CREATE TABLE IF NOT EXISTS counters(device TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS handled_events(key TEXT PRIMARY KEY, command TEXT NOT NULL);
"""

OPEN_STATES = ("queued", "sent")


@dataclass(frozen=True, slots=True)
class StoredCommand:
    command_id: str
    device_id: str
    action: str
    args: dict[str, int | str]
    requester: str
    created: int
    expires: int
    counter: int | None
    state: str  # queued, sent, answered, expired
    outcome: dict[str, Any] | None

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES


_COLS = "id, device, action, args, requester, created, expires, counter, state, outcome"


def _row(r: tuple[Any, ...]) -> StoredCommand:
    return StoredCommand(
        r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8],
        None if r[9] is None else json.loads(r[9]),
    )  # fmt: skip


def _add(db: Sql, c: StoredCommand, event_key: str | None) -> tuple[StoredCommand, bool]:
    db.execute("BEGIN IMMEDIATE")
    try:
        if event_key is not None:
            row = db.execute(
                "SELECT command FROM handled_events WHERE key=?", (event_key,)
            ).fetchone()
            if row is not None:
                got = _get(db, str(row[0]))
                db.execute("COMMIT")
                assert got is not None
                return got, False
        old = _get(db, c.command_id)
        if old is not None:
            db.execute("COMMIT")
            return old, False
        db.execute(
            f"INSERT INTO commands({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                c.command_id, c.device_id, c.action, json.dumps(c.args), c.requester,
                c.created, c.expires, None, "queued", None,
            ),
        )  # fmt: skip
        if event_key is not None:
            db.execute(
                "INSERT INTO handled_events(key, command) VALUES (?, ?)", (event_key, c.command_id)
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return c, True


def _get(db: Sql, command_id: str) -> StoredCommand | None:
    r = db.execute(f"SELECT {_COLS} FROM commands WHERE id=?", (command_id,)).fetchone()
    return None if r is None else _row(r)


def _open(db: Sql) -> list[StoredCommand]:
    rows = db.execute(
        f"SELECT {_COLS} FROM commands WHERE state IN ('queued','sent') ORDER BY seq"
    ).fetchall()
    return [_row(r) for r in rows]


def _assign(db: Sql, command_id: str) -> StoredCommand:
    db.execute("BEGIN IMMEDIATE")
    try:
        c = _get(db, command_id)
        if c is None:
            raise DownlinkStoreError(f"no command {command_id!r} in the downlink store")
        if c.counter is None:
            row = db.execute("SELECT n FROM counters WHERE device=?", (c.device_id,)).fetchone()
            n = (int(row[0]) if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO counters(device, n) VALUES (?, ?)", (c.device_id, n))
            db.execute("UPDATE commands SET counter=?, state='sent' WHERE id=?", (n, command_id))
            c = _get(db, command_id)
            assert c is not None
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return c


def _finish(db: Sql, command_id: str, state: str, outcome: dict[str, Any]) -> bool:
    cur = db.execute(
        "UPDATE commands SET state=?, outcome=? WHERE id=? AND state IN ('queued','sent')",
        (state, json.dumps(outcome, separators=(",", ":")), command_id),
    )
    return cur.rowcount == 1


class CommandStore(SqliteStore):
    SCHEMA = SCHEMA
    WHAT = "downlink store"
    ERROR = DownlinkStoreError

    async def add(
        self, cmd: StoredCommand, event_key: str | None = None
    ) -> tuple[StoredCommand, bool]:
        """Queue `cmd`; (the stored command, True) if new, (the earlier one, False) when its id
        or its `event_key` (a contract event) was seen before: nothing is queued twice."""
        return await self._run(_add, cmd, event_key)

    async def get(self, command_id: str) -> StoredCommand | None:
        return await self._run(_get, command_id)

    async def open_commands(self) -> list[StoredCommand]:
        """Queued and sent commands, oldest first."""
        return await self._run(_open)

    async def assign_counter(self, command_id: str) -> StoredCommand:
        """The command with its downlink counter (assigned now if it had none)."""
        return await self._run(_assign, command_id)

    async def finish(self, command_id: str, state: str, outcome: dict[str, Any]) -> bool:
        """Close an open command (answered or expired); False if it was not open."""
        return await self._run(_finish, command_id, state, outcome)


__all__ = ["CommandStore", "DownlinkStoreError", "StoredCommand"]
