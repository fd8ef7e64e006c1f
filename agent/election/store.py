"""The election's sqlite store: the decided rounds of one board and the next round to decide,
committed in the store's own thread (agent/sqlitestore.py)."""

from __future__ import annotations

import time

from agent.election.tally import RoundResult
from agent.errors import ElectionError
from agent.sqlitestore import Sql, SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    round INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    decided_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


class ElectionStore(SqliteStore):
    """sqlite file of decided rounds and the next round to decide, for one board; committed in
    the store's own thread."""

    SCHEMA = _SCHEMA
    WHAT = "election store"
    ERROR = ElectionError

    async def open(self, board: str | None = None, mode: str | None = None) -> None:
        """Open (creating it); with `board`, refuse a store that belongs to another board."""
        await super().open()
        if board is None:
            return
        for k, want in (("board", board), ("mode", mode)):
            have = await self.meta(k)
            if have is None and want is not None:
                await self.set_meta(k, want)
            elif have != want:
                await self.close()
                raise ElectionError(
                    f"{self.path} holds the rounds of {k} {have}, but election.{k} is {want}: "
                    "point election.store at another file for another board"
                )

    async def save(self, result: RoundResult) -> None:
        """The result and the next round to decide, in one transaction."""
        await self._run(_save, result.round, result.to_json(), time.time())

    async def next_round(self) -> int | None:
        v = await self.meta("next_round")
        return None if v is None else int(v)

    async def set_next_round(self, round: int) -> None:
        await self.set_meta("next_round", str(round))

    async def mark_published(self, round: int) -> None:
        await self._run(_mark_published, round)

    async def unpublished(self) -> list[RoundResult]:
        return [RoundResult.from_json(b) for b in await self._run(_unpublished)]

    async def result(self, round: int) -> tuple[RoundResult, bool] | None:
        row = await self._run(_result, round)
        return None if row is None else (RoundResult.from_json(row[0]), row[1])

    async def latest(self, count: int) -> list[tuple[RoundResult, bool]]:
        return [(RoundResult.from_json(b), p) for b, p in await self._run(_latest, count)]


# -- the store's statements: run in its thread, on its connection --------------------------------


def _save(db: Sql, round: int, body: bytes, decided_at: float) -> None:
    with db:
        db.execute(
            "INSERT OR REPLACE INTO results(round, body, published, decided_at) "
            "VALUES (?, ?, 0, ?)",
            (round, body, decided_at),
        )
        db.execute("INSERT OR REPLACE INTO meta(k, v) VALUES ('next_round', ?)", (str(round + 1),))


def _mark_published(db: Sql, round: int) -> None:
    db.execute("UPDATE results SET published=1 WHERE round=?", (round,))


def _unpublished(db: Sql) -> list[bytes]:
    rows = db.execute("SELECT body FROM results WHERE published=0 ORDER BY round")
    return [bytes(r[0]) for r in rows.fetchall()]


def _result(db: Sql, round: int) -> tuple[bytes, bool] | None:
    row = db.execute("SELECT body, published FROM results WHERE round=?", (round,)).fetchone()
    return None if row is None else (bytes(row[0]), bool(row[1]))


def _latest(db: Sql, count: int) -> list[tuple[bytes, bool]]:
    rows = db.execute("SELECT body, published FROM results ORDER BY round DESC LIMIT ?", (count,))
    return [(bytes(b), bool(p)) for b, p in rows.fetchall()]
