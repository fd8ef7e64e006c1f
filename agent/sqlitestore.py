"""A small sqlite file of the agent's own (transactions, election rounds): WAL, synchronous=FULL,
a meta key/value table, and one clear error when it is used before it is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.errors import AgentError


class SqliteStore:
    """Subclasses set SCHEMA (it must create `meta(k TEXT PRIMARY KEY, v TEXT)`), WHAT (for
    messages) and ERROR (the exception type of their component)."""

    SCHEMA = ""
    WHAT = "store"
    ERROR: type[AgentError] = AgentError

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(self.SCHEMA)
        return db

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def _db(self) -> sqlite3.Connection:
        if self.db is None:
            raise self.ERROR(f"{self.WHAT} {self.path} is not open")
        return self.db

    def meta(self, k: str) -> str | None:
        row = self._db().execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, k: str, v: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", (k, v))
