"""A small sqlite file of the agent's own (transactions, election rounds): WAL, synchronous=FULL,
a meta key/value table. Like the journal, a store owns one thread (agent/threadowner.py) and
its connection lives there.

``async with Store(path) as store`` (or `await open()` / `await close()`) starts the thread and
opens the file in it (``check_same_thread=True``: any other thread is refused); subclasses write
their statements as functions of the connection and `await self._run(fn, ...)` them, so no
commit (each an fsync at synchronous=FULL) ever runs on the event loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, TypeVarTuple

from agent.errors import AgentError
from agent.threadowner import ThreadOwner

# The connection a store's statement functions receive, in the store's own thread.
Sql = sqlite3.Connection

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class SqliteStore(ThreadOwner):
    """Subclasses set SCHEMA (it must create `meta(k TEXT PRIMARY KEY, v TEXT)`), WHAT (for
    messages) and ERROR (the exception type of their component). The thread, `open`, `close`
    and ``async with`` are ThreadOwner's (agent/threadowner.py), shared with the journal."""

    SCHEMA = ""
    WHAT = "store"
    ERROR: type[AgentError] = AgentError

    def __init__(self, path: Path) -> None:
        super().__init__(self.WHAT.replace(" ", "-"))
        self.path = path
        self._store_conn: sqlite3.Connection | None = None  # used in the store's thread only

    def _not_open(self) -> AgentError:
        return self.ERROR(f"{self.WHAT} {self.path} is not open")

    async def _run(self, fn: Callable[[Sql, *_Ts], _T], *args: *_Ts) -> _T:
        """`fn(connection, *args)` in the store's thread: the only way to the connection."""
        return await self._call(self._store_apply, fn, *args)

    def _store_apply(self, fn: Callable[[Sql, *_Ts], _T], *args: *_Ts) -> _T:
        conn = self._store_conn
        if conn is None:  # the opening that this call queued behind failed
            raise self._not_open()
        return fn(conn, *args)

    def _thread_open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(self.SCHEMA)
        except BaseException:
            db.close()
            raise
        self._store_conn = db

    def _thread_close(self) -> None:
        conn, self._store_conn = self._store_conn, None
        if conn is not None:
            conn.close()

    async def meta(self, k: str) -> str | None:
        return await self._run(_get_meta, k)

    async def set_meta(self, k: str, v: str) -> None:
        await self._run(_set_meta, k, v)


def _get_meta(db: Sql, k: str) -> str | None:
    row = db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(db: Sql, k: str, v: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", (k, v))
