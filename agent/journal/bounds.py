"""Which entries the journal's size and age bounds remove: delivered ones first, then (only with
overflow = "drop-oldest") undelivered ones, whose range is recorded for the bridge to announce.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from agent.journal.drops import NOTHING, Removal, record_drop
from agent.journal.schema import META_PRUNED_UPTO, ROW_OVERHEAD_BYTES, UPSERT_META_MAX


@dataclass(frozen=True)
class Room:
    """What the journal holds when it makes room: its bytes (envelopes + overhead per row), the
    sequence every sink acknowledged, and whether undelivered entries may go."""

    held_bytes: int
    delivered_upto: int
    drop_undelivered: bool


def make_room(
    conn: sqlite3.Connection, room: Room, *, cutoff: float | None, target: int, now: int
) -> tuple[Removal, Removal]:
    """Delete (inside the caller's transaction) what the policy removes to get the journal to
    `target` bytes and rid of entries created before `cutoff`; returns (delivered, dropped)."""
    upto = room.delivered_upto
    delivered = _plan(conn, room, after=0, upto=upto, cutoff=cutoff, target=target, freed=0)
    _delete(conn, delivered)
    dropped = NOTHING
    if room.drop_undelivered:
        dropped = _plan(
            conn, room, after=upto, upto=None, cutoff=cutoff, target=target, freed=delivered.freed
        )
        _delete(conn, dropped)
        if dropped.count:
            record_drop(conn, dropped, now)
    return delivered, dropped


def _plan(
    conn: sqlite3.Connection,
    room: Room,
    *,
    after: int,
    upto: int | None,
    cutoff: float | None,
    target: int,
    freed: int,
) -> Removal:
    """The run of entries in (after, upto], from the oldest, that is too old or must go to
    bring the journal (already `freed` bytes lighter) down to `target` bytes."""
    sql = "SELECT seq, created_at, length(envelope) FROM entries WHERE seq > ?"
    params: tuple[int, ...] = (after,)
    if upto is not None:
        sql += " AND seq <= ?"
        params = (after, upto)
    held = room.held_bytes
    over = held - freed > target
    old = cutoff is not None
    if not (over or old):
        return NOTHING
    count = gone = first = last = 0
    by_age = by_bytes = False
    cur = conn.execute(sql + " ORDER BY seq", params)
    try:
        for seq, created_at, size in cur:
            too_old = cutoff is not None and created_at < cutoff
            over = held - freed - gone > target
            if not (too_old or over):
                break
            by_age = by_age or too_old
            by_bytes = by_bytes or (over and not too_old)
            first = first or seq
            last = seq
            count += 1
            gone += size + ROW_OVERHEAD_BYTES
    finally:
        cur.close()
    return Removal(count, gone, first, last, by_age, by_bytes)


def _delete(conn: sqlite3.Connection, removal: Removal) -> None:
    if not removal.count:
        return
    conn.execute(
        "DELETE FROM entries WHERE seq BETWEEN ? AND ?", (removal.first_seq, removal.last_seq)
    )
    conn.execute(UPSERT_META_MAX, (META_PRUNED_UPTO, removal.last_seq))
