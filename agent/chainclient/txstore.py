"""The store of the agent's own transactions (sqlite, synchronous=FULL, in its own thread): a
transaction is written here before it is broadcast, so a crash never lets a nonce be used twice,
and unfinished ones are watched again after a restart (agent/chainclient/sender.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.chainclient.tx import Eip1559Tx, SignedTx
from agent.errors import ChainError, TransactionError
from agent.sqlitestore import Sql, SqliteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS txs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nonce INTEGER NOT NULL,
    to_addr TEXT,
    value TEXT NOT NULL,
    data BLOB NOT NULL,
    gas INTEGER NOT NULL,
    tip TEXT NOT NULL,
    cap TEXT NOT NULL,
    hash TEXT NOT NULL,
    raw BLOB NOT NULL,
    status TEXT NOT NULL,          -- pending | mined
    broadcast_at REAL NOT NULL,
    block_number INTEGER,
    block_hash TEXT,
    mined_hash TEXT
);
CREATE TABLE IF NOT EXISTS tx_hashes (tx_id INTEGER NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


@dataclass
class OwnTx:
    id: int
    tx: Eip1559Tx
    hash: str
    raw: bytes
    status: str
    broadcast_at: float
    hashes: list[str] = field(default_factory=list)
    block_number: int | None = None
    block_hash: str | None = None
    mined_hash: str | None = None


class TxStore(SqliteStore):
    """sqlite file of the agent's own transactions (small writes, fsynced: synchronous=FULL),
    committed in the store's own thread."""

    SCHEMA = _SCHEMA
    WHAT = "transaction store"
    ERROR = ChainError

    async def max_nonce(self) -> int | None:
        return await self._run(_max_nonce)

    async def find_by_data(self, to: str | None, data: bytes) -> list[int]:
        """Ids of stored transactions with exactly this recipient and call data (a caller whose
        calls are deterministic uses this to never send the same call twice, across restarts)."""
        return await self._run(_find_by_data, to, data)

    async def insert(self, s: SignedTx, now: float) -> int:
        return await self._run(_insert, s, now)

    async def delete(self, tx_id: int) -> None:
        await self._run(_delete, tx_id)

    async def resigned(self, tx_id: int, s: SignedTx, now: float) -> None:
        """A replacement (same nonce, higher fees) or the same call under a new nonce."""
        await self._run(_resigned, tx_id, s, now)

    async def set_mined(
        self, tx_id: int, number: int | None, block: str | None, h: str | None
    ) -> None:
        await self._run(_set_mined, tx_id, number, block, h)

    async def get(self, tx_id: int, chain_id: int) -> OwnTx:
        own = await self._run(_get, tx_id, chain_id)
        if own is None:
            raise TransactionError(f"no transaction #{tx_id} in {self.path}")
        return own

    async def unfinished(self, chain_id: int) -> list[OwnTx]:
        """Those not yet seen mined (a reorg found by `wait` puts a mined one back here)."""
        return await self._run(_unfinished, chain_id)


# -- the store's statements: run in its thread, on its connection --------------------------------


def _max_nonce(db: Sql) -> int | None:
    row = db.execute("SELECT MAX(nonce) FROM txs").fetchone()
    return None if row[0] is None else int(row[0])


def _find_by_data(db: Sql, to: str | None, data: bytes) -> list[int]:
    rows = db.execute("SELECT id FROM txs WHERE to_addr IS ? AND data=? ORDER BY id", (to, data))
    return [int(r[0]) for r in rows.fetchall()]


def _insert(db: Sql, s: SignedTx, now: float) -> int:
    t = s.tx
    with db:
        cur = db.execute(
            "INSERT INTO txs(nonce, to_addr, value, data, gas, tip, cap, hash, raw, status,"
            " broadcast_at) VALUES (?,?,?,?,?,?,?,?,?,'pending',?)",
            (
                t.nonce,
                t.to,
                str(t.value),
                t.data,
                t.gas,
                str(t.max_priority_fee_per_gas),
                str(t.max_fee_per_gas),
                s.hash_hex,
                s.raw,
                now,
            ),
        )
        assert cur.lastrowid is not None
        db.execute("INSERT INTO tx_hashes VALUES (?, ?)", (cur.lastrowid, s.hash_hex))
    return cur.lastrowid


def _delete(db: Sql, tx_id: int) -> None:
    with db:
        db.execute("DELETE FROM txs WHERE id=?", (tx_id,))
        db.execute("DELETE FROM tx_hashes WHERE tx_id=?", (tx_id,))


def _resigned(db: Sql, tx_id: int, s: SignedTx, now: float) -> None:
    t = s.tx
    with db:
        db.execute(
            "UPDATE txs SET nonce=?, gas=?, tip=?, cap=?, hash=?, raw=?, status='pending',"
            " broadcast_at=?, block_number=NULL, block_hash=NULL, mined_hash=NULL WHERE id=?",
            (
                t.nonce,
                t.gas,
                str(t.max_priority_fee_per_gas),
                str(t.max_fee_per_gas),
                s.hash_hex,
                s.raw,
                now,
                tx_id,
            ),
        )
        db.execute("INSERT INTO tx_hashes VALUES (?, ?)", (tx_id, s.hash_hex))


def _set_mined(db: Sql, tx_id: int, number: int | None, block: str | None, h: str | None) -> None:
    status = "pending" if number is None else "mined"
    db.execute(
        "UPDATE txs SET status=?, block_number=?, block_hash=?, mined_hash=? WHERE id=?",
        (status, number, block, h, tx_id),
    )


def _get(db: Sql, tx_id: int, chain_id: int) -> OwnTx | None:
    row = db.execute("SELECT * FROM txs WHERE id=?", (tx_id,)).fetchone()
    return None if row is None else _own(db, row, chain_id)


def _unfinished(db: Sql, chain_id: int) -> list[OwnTx]:
    rows = db.execute("SELECT * FROM txs WHERE status='pending' ORDER BY nonce")
    return [_own(db, r, chain_id) for r in rows.fetchall()]


def _own(db: Sql, r: tuple[Any, ...], chain_id: int) -> OwnTx:
    (i, nonce, to, value, data, gas, tip, cap, h, raw, status, at, bn, bh, mh) = r
    hashes = [str(x[0]) for x in db.execute("SELECT hash FROM tx_hashes WHERE tx_id=?", (i,))]
    tx = Eip1559Tx(chain_id, nonce, int(tip), int(cap), gas, to, int(value), bytes(data))
    return OwnTx(i, tx, h, bytes(raw), status, at, hashes, bn, bh, mh)
