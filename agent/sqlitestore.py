"""A small sqlite file of the agent's own (transactions, election rounds): WAL, synchronous=FULL,
a meta key/value table. Like the journal, a store owns one thread and its connection lives there.

``async with Store(path) as store`` (or `await open()` / `await close()`) starts the thread and
opens the file in it (``check_same_thread=True``: any other thread is refused); subclasses write
their statements as functions of the connection and `await self._run(fn, ...)` them, so no
commit (each an fsync at synchronous=FULL) ever runs on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar, TypeVarTuple

from agent.errors import AgentError

# The connection a store's statement functions receive, in the store's own thread.
Sql = sqlite3.Connection

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class SqliteStore:
    """Subclasses set SCHEMA (it must create `meta(k TEXT PRIMARY KEY, v TEXT)`), WHAT (for
    messages) and ERROR (the exception type of their component)."""

    SCHEMA = ""
    WHAT = "store"
    ERROR: type[AgentError] = AgentError

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store_conn: sqlite3.Connection | None = None  # used in _store_worker only
        self._store_worker: ThreadPoolExecutor | None = None

    @property
    def is_open(self) -> bool:
        return self._store_worker is not None

    async def open(self) -> None:
        """Create or open the file in the store's thread. Does nothing if open; callers that
        race here share one opening (their calls queue behind it in the thread)."""
        if self._store_worker is not None:
            return
        worker = ThreadPoolExecutor(1, thread_name_prefix=self.WHAT.replace(" ", "-"))
        self._store_worker = worker
        try:
            await asyncio.get_running_loop().run_in_executor(worker, self._connect)
        except BaseException:
            if self._store_worker is worker:
                self._store_worker = None
            worker.submit(self._disconnect)  # also when cancelled while connecting
            worker.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Close the file and end the thread. Safe to call twice, or on a store never opened."""
        worker, self._store_worker = self._store_worker, None
        if worker is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(worker, self._disconnect)
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

    async def _run(self, fn: Callable[[Sql, *_Ts], _T], *args: *_Ts) -> _T:
        """`fn(connection, *args)` in the store's thread: the only way to the connection."""
        worker = self._store_worker
        if worker is None:
            raise self.ERROR(f"{self.WHAT} {self.path} is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(worker, self._store_apply, fn, *args)

    def _store_apply(self, fn: Callable[[Sql, *_Ts], _T], *args: *_Ts) -> _T:
        conn = self._store_conn
        if conn is None:  # the opening that this call queued behind failed
            raise self.ERROR(f"{self.WHAT} {self.path} is not open")
        return fn(conn, *args)

    def _connect(self) -> None:
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

    def _disconnect(self) -> None:
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
