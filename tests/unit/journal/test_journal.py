"""Journal: durable sequences, ordered delivery with acknowledged watermarks, and its bounds.

Every test uses a real sqlite file under tmp_path; observations carry fake envelope bytes.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import pytest

from agent.errors import JournalError, JournalFull, JournalHeld
from agent.journal import ROW_OVERHEAD_BYTES, DropRecord, Journal, PruneReport
from agent.model import AuthMethod, Observation, Reading, Transport

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[3]
GATEWAY = "0x" + "ab" * 20
ENVELOPE_SIZE = 136
ROW = ENVELOPE_SIZE + ROW_OVERHEAD_BYTES  # 200 bytes per stored observation
DAY = 86400.0
T0 = 1_700_000_000.0


class FakeClock:
    """A fake clock, as ARCHITECTURE.md allows: the age bound is days, which no test can wait."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def observation(
    seq: int,
    *,
    device: str = "dev-1",
    sensor: str = "temp",
    counter: int | None = None,
    size: int = ENVELOPE_SIZE,
) -> Observation:
    reading = Reading(
        device_id=device,
        sensor=sensor,
        value=215,
        exponent=-1,
        unit="Cel",
        timestamp=1_700_000_000,
        counter=seq if counter is None else counter,
        transport=Transport.MQTT,
        auth=AuthMethod.HMAC,
    )
    envelope = f'{{"seq":{seq},"device":"{device}","sensor":"{sensor}"}}'.encode()
    return Observation(
        reading=reading,
        gateway_sequence=seq,
        gateway=GATEWAY,
        digest=bytes(32),
        signature=bytes(65),
        envelope=envelope.ljust(size, b" "),
    )


async def append_new(
    journal: Journal, n: int, *, device: str = "dev-1", sensor: str = "temp"
) -> list[int]:
    seqs = list(await journal.next_sequences(n))
    await journal.append([observation(s, device=device, sensor=sensor) for s in seqs])
    return seqs


async def stored_seqs(journal: Journal) -> list[int]:
    """Every stored sequence, read as the "bridge" sink that all these journals have."""
    return [e.seq for e in await journal.read_after("bridge", 0, 10_000)]


async def on_connection(journal: Journal, fn: Callable[[sqlite3.Connection], T]) -> T:
    """White-box: run `fn` on the journal's own connection, in the journal's own thread (the
    only thread the connection accepts)."""

    def call() -> T:
        conn = journal._core._conn
        assert conn is not None
        return fn(conn)

    return await journal._call(call)


def drop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=journal_drop" in r.getMessage()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


# -- sequences -------------------------------------------------------------------------------


async def test_sequences_start_at_one_and_have_no_gap_across_close_and_reopen(
    path: Path,
) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        assert list(await journal.next_sequences(3)) == [1, 2, 3]
        assert await append_new(journal, 3) == [1, 2, 3]
        # Numbers asked for but never appended are not used up: nothing signed with them left.
        assert list(await journal.next_sequences(9)) == list(range(4, 13))
    for first in (4, 8):
        async with Journal(path, sinks=["bridge"]) as journal:
            assert await append_new(journal, 4) == list(range(first, first + 4))
    async with Journal(path, sinks=["bridge"]) as journal:
        assert await stored_seqs(journal) == list(range(1, 12))


async def test_sequences_resume_right_after_the_last_entry_after_a_fake_crash(
    path: Path, tmp_path: Path
) -> None:
    """Fake crash: while the first journal is still open (never closed, never checkpointed), its
    database and -wal files are copied elsewhere, which is what a SIGKILL leaves on disk, and a
    second Journal opens the copy."""
    journal = Journal(path, sinks=["bridge"])
    await journal.open()
    appended = await append_new(journal, 7)
    crashed = tmp_path / "crashed" / "journal.sqlite"
    crashed.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{crashed}{suffix}")
    await journal.close()

    async with Journal(crashed, sinks=["bridge"]) as recovered:
        assert await stored_seqs(recovered) == appended
        assert await append_new(recovered, 3) == [8, 9, 10]


async def test_a_journal_with_an_old_block_mark_resumes_above_it_once(path: Path) -> None:
    """A journal written by an agent that reserved blocks of numbers ahead (meta "seq_mark"):
    numbers up to the mark may have been handed out, so the next is above it, then gapless."""
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 2)
        await on_connection(
            journal, lambda c: c.execute("INSERT INTO meta (key, value) VALUES ('seq_mark', 1000)")
        )
    async with Journal(path, sinks=["bridge"]) as journal:
        assert await append_new(journal, 2) == [1001, 1002]
    async with Journal(path, sinks=["bridge"]) as journal:
        assert await append_new(journal, 1) == [1003]


async def test_sigkill_mid_stream_leaves_sequences_one_to_n_and_resumes_at_n_plus_one(
    path: Path,
) -> None:
    """A real crash: a child process appends batches as fast as it can and is SIGKILLed by this
    test at some point in the stream (also mid-transaction, at times)."""
    child = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from agent.journal import Journal
        from tests.unit.journal.test_journal import observation

        async def main():
            journal = Journal(Path(sys.argv[1]), sinks=["bridge"])
            await journal.open()
            n = 0
            while True:
                await journal.append_with(7, lambda seqs: [observation(s) for s in seqs])
                n += 7
                if n == 700:
                    print("going", flush=True)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            child,
            str(path),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"going\n"
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        async with Journal(path, sinks=["bridge"]) as journal:
            stored = await stored_seqs(journal)
            assert stored == list(range(1, len(stored) + 1))
            assert list(await journal.next_sequences(2)) == [len(stored) + 1, len(stored) + 2]


async def test_append_refuses_any_sequence_but_the_next_ones(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        with pytest.raises(JournalError, match="not the next one"):
            await journal.append([observation(2)])
        with pytest.raises(JournalError, match="not the next one"):
            await journal.append([observation(1), observation(1)])
        await journal.append([observation(1)])
        with pytest.raises(JournalError, match="not the next one"):
            await journal.append([observation(1)])
        assert await stored_seqs(journal) == [1]


async def test_nothing_is_read_out_before_it_is_durable(path: Path) -> None:
    """At synchronous = normal a commit is not yet on disk; a read syncs the WAL first."""
    async with Journal(path, sinks=["bridge"], synchronous="normal") as journal:
        await append_new(journal, 5)
        assert journal._core.durable_seq == 0
        assert [e.seq for e in await journal.read_after("bridge", 0, 2)] == [1, 2]
        assert journal._core.durable_seq == 5  # one fsync covers every commit so far
        await append_new(journal, 1)
        assert await journal.entry(6) is not None
        assert journal._core.durable_seq == 6
        await append_new(journal, 1)
        assert await journal.sync() == 7
    async with Journal(path, sinks=["bridge"], synchronous="full") as journal:
        await append_new(journal, 1)
        assert journal._core.durable_seq == 8  # each commit is synced at "full"


# -- appending and reading -------------------------------------------------------------------


async def test_append_then_read_after_returns_entries_in_sequence_order(path: Path) -> None:
    clock = FakeClock()
    async with Journal(path, sinks=["bridge"], clock=clock) as journal:
        seqs = list(await journal.next_sequences(6))
        batch = [observation(s, device=f"dev-{s % 2}") for s in seqs]
        await journal.append([batch[i] for i in (3, 0, 5, 1, 4, 2)])

        entries = await journal.read_after("bridge", 0, 100)
        assert [e.seq for e in entries] == seqs
        assert [e.envelope for e in entries] == [o.envelope for o in batch]
        assert entries[1].device_id == "dev-0" and entries[1].sensor == "temp"
        assert {e.created_at for e in entries} == {T0}
        assert [e.seq for e in await journal.read_after("bridge", 3, 2)] == [4, 5]
        assert await journal.read_after("bridge", 6, 10) == []


async def test_a_batch_of_256_is_one_transaction(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        seqs = await journal.next_sequences(256)
        statements: list[str] = []
        await on_connection(journal, lambda c: c.set_trace_callback(statements.append))
        await journal.append([observation(s) for s in seqs])
        await on_connection(journal, lambda c: c.set_trace_callback(None))
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
        assert (await journal.stats()).entries == 256


async def test_latest_returns_the_newest_entry_for_a_device_sensor(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 2, device="dev-a", sensor="temp")
        await append_new(journal, 1, device="dev-a", sensor="hum")
        await append_new(journal, 3, device="dev-b", sensor="temp")
        latest = await journal.latest("dev-a", "temp")
        assert latest is not None and latest.seq == 2
        hum = await journal.latest("dev-a", "hum")
        assert hum is not None and hum.seq == 3
        assert await journal.latest("dev-c", "temp") is None


async def test_unknown_sink_raises_journal_error(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 1)
        with pytest.raises(JournalError, match="unknown sink 'oracle'"):
            await journal.ack("oracle", 1)
        with pytest.raises(JournalError, match="unknown sink 'oracle'"):
            await journal.cursor("oracle")
        with pytest.raises(JournalError, match="unknown sink 'oracle'"):
            await journal.read_after("oracle", 0, 10)


# -- acknowledgements ------------------------------------------------------------------------


async def test_ack_persists_and_the_backlog_replays_in_order_after_reopen(path: Path) -> None:
    sinks = ["bridge", "chain"]
    async with Journal(path, sinks=sinks) as journal:
        await append_new(journal, 10)
        assert await journal.cursor("bridge") == 0
        await journal.ack("bridge", 4)
        await journal.ack("bridge", 2)  # lower: ignored
        assert await journal.cursor("bridge") == 4
        with pytest.raises(JournalError, match="last appended is 10"):
            await journal.ack("bridge", 11)

    async with Journal(path, sinks=sinks) as journal:
        assert await journal.cursor("bridge") == 4
        assert await journal.cursor("chain") == 0
        replay = await journal.read_after("bridge", await journal.cursor("bridge"), 100)
        assert [e.seq for e in replay] == [5, 6, 7, 8, 9, 10]
        stats = await journal.stats()
        assert stats.backlog == {"bridge": 6, "chain": 10}
        assert stats.last_seq == 10


def counted_backlog(path: Path, after: int) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM entries WHERE seq > ?", (after,)).fetchone()[0])
    finally:
        db.close()


async def test_backlog_matches_a_row_count_after_drops_and_with_a_hole_in_the_file(
    path: Path,
) -> None:
    # Counted without a scan while the kept entries are one run (after drops from the oldest
    # end), and by counting rows when they are not (here a hole made in the file directly).
    async with Journal(
        path, sinks=["bridge", "chain"], max_bytes=10 * ROW, overflow="drop-oldest"
    ) as journal:
        await append_new(journal, 10)
        await append_new(journal, 4)  # 1..4 dropped
        await journal.ack("bridge", 9)
        await journal.ack("chain", 2)  # below the oldest kept entry
        stats = await journal.stats()
        assert stats.backlog == {"bridge": counted_backlog(path, 9), "chain": 10}
        assert stats.backlog["bridge"] == 5
    db = sqlite3.connect(path)
    db.execute("DELETE FROM entries WHERE seq IN (7, 12)")
    db.commit()
    db.close()
    async with Journal(path, sinks=["bridge", "chain"], max_bytes=10 * ROW) as journal:
        stats = await journal.stats()
        assert stats.entries == 8
        assert stats.backlog == {"bridge": 4, "chain": 8}
        await journal.ack("bridge", 14)
        assert (await journal.stats()).backlog["bridge"] == 0


async def test_acknowledged_entries_stay_until_the_bounds_need_their_room(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 5)
        await journal.ack("bridge", 5)
        assert await journal.enforce_bounds() == PruneReport(0, 0, None)
        assert (await journal.stats()).entries == 5
        latest = await journal.latest("dev-1", "temp")
        assert latest is not None and latest.seq == 5


# -- device counters -------------------------------------------------------------------------


async def test_last_counters_survive_reopen_and_pruning(path: Path) -> None:
    clock = FakeClock()
    async with Journal(path, sinks=["bridge"], max_bytes=100 * ROW, clock=clock) as journal:
        seqs = await journal.next_sequences(4)
        await journal.append(
            [
                observation(seqs[0], device="dev-a", counter=7),
                observation(seqs[1], device="dev-a", counter=9),
                observation(seqs[2], device="dev-b", counter=2**64 - 1),  # uint64 max
                observation(seqs[3], device="dev-a", counter=8),
            ]
        )
        expected = {"dev-a": 9, "dev-b": 2**64 - 1}
        assert await journal.last_counters() == expected
        await journal.ack("bridge", 4)

    clock.now += 30 * DAY
    async with Journal(path, sinks=["bridge"], max_bytes=100 * ROW, clock=clock) as journal:
        assert await journal.last_counters() == expected
        assert (await journal.enforce_bounds()).delivered_removed == 4
        assert (await journal.stats()).entries == 0
        assert await journal.last_counters() == expected
        assert (await journal.stats()).last_seq == 4
    async with Journal(path, sinks=["bridge"]) as journal:
        assert await journal.last_counters() == expected
        assert (await journal.stats()).last_seq == 4


# -- bounds ----------------------------------------------------------------------------------


async def test_drop_oldest_removes_delivered_first_then_oldest_undelivered_with_one_log_line(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    async with Journal(
        path, sinks=["bridge"], max_bytes=10 * ROW, overflow="drop-oldest"
    ) as journal:
        await append_new(journal, 8)
        await journal.ack("bridge", 3)
        await append_new(journal, 4)  # needs 2 rows of room: delivered 1 and 2 go, nothing else
        assert await stored_seqs(journal) == list(range(3, 13))
        assert drop_lines(caplog) == []

        await append_new(journal, 3)  # needs 3 rows: delivered 3, then undelivered 4 and 5
        assert await stored_seqs(journal) == list(range(6, 16))
        assert drop_lines(caplog) == [
            "event=journal_drop policy=drop-oldest dropped=2 seq_from=4 seq_to=5 reason=max_bytes"
        ]
        stats = await journal.stats()
        assert (stats.entries, stats.bytes) == (10, 10 * ROW)
        # The dropped range waits in the journal until it was announced upstream.
        assert journal.drops_recorded == 1
        (record,) = await journal.pending_drops()
        assert (record.first_seq, record.last_seq) == (4, 5)


async def test_drop_records_are_kept_until_announced_then_as_history_until_max_age(
    path: Path,
) -> None:
    clock = FakeClock()
    async with Journal(
        path, sinks=["bridge"], max_bytes=4 * ROW, overflow="drop-oldest", clock=clock
    ) as journal:
        await append_new(journal, 4)
        await append_new(journal, 2)  # 1 and 2 dropped
        clock.now += 10
        await append_new(journal, 1)  # 3 dropped
        assert await journal.pending_drops() == [
            DropRecord(1, 2, int(T0)),
            DropRecord(3, 3, int(T0) + 10),
        ]
        await journal.drop_announced(1)
    async with Journal(
        path, sinks=["bridge"], max_bytes=4 * ROW, overflow="drop-oldest", clock=clock
    ) as journal:
        assert await journal.pending_drops() == [DropRecord(3, 3, int(T0) + 10)]
        assert [announced for _, announced in await journal.drops()] == [True, False]
        clock.now += 8 * DAY
        await journal.ack("bridge", 7)
        await journal.enforce_bounds()
        assert [d.first_seq for d, _ in await journal.drops()] == [3]  # only announced go


async def test_pause_raises_journal_held_and_drops_nothing(path: Path) -> None:
    async with Journal(path, sinks=["bridge"], max_bytes=10 * ROW) as journal:  # the default
        await append_new(journal, 10)
        with pytest.raises(JournalHeld, match="intake pauses"):
            await append_new(journal, 1)
        assert await stored_seqs(journal) == list(range(1, 11))
        assert await journal.pending_drops() == []
        await journal.ack("bridge", 1)
        assert await append_new(journal, 1) == [11]


async def test_enforce_bounds_drops_to_a_smaller_max_bytes_after_reopen(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 10)
        await journal.ack("bridge", 2)
    async with Journal(
        path, sinks=["bridge"], max_bytes=5 * ROW, overflow="drop-oldest"
    ) as journal:
        assert await journal.enforce_bounds() == PruneReport(2, 3, (3, 5))
        assert await stored_seqs(journal) == [6, 7, 8, 9, 10]
        assert await journal.enforce_bounds() == PruneReport(0, 0, None)
    assert len(drop_lines(caplog)) == 1


async def test_reject_new_raises_journal_full_and_keeps_old_entries(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    async with Journal(
        path, sinks=["bridge"], max_bytes=10 * ROW, overflow="reject-new"
    ) as journal:
        await append_new(journal, 10)
        before = await journal.stats()
        (extra,) = await journal.next_sequences(1)
        with pytest.raises(JournalFull) as raised:
            await journal.append([observation(extra)])
        message = str(raised.value)
        for needle in (str(path), "journal.max_bytes", "journal.overflow", str(10 * ROW)):
            assert needle in message
        assert await stored_seqs(journal) == list(range(1, 11))
        assert await journal.stats() == before
        assert await journal.enforce_bounds() == PruneReport(0, 0, None)

        await journal.ack("bridge", 1)  # room now comes from a delivered entry
        await journal.append([observation(extra)])
        assert await stored_seqs(journal) == list(range(2, 12))
    assert drop_lines(caplog) == []


async def test_max_age_removes_delivered_then_drops_old_undelivered(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    clock = FakeClock()
    async with Journal(
        path, sinks=["bridge"], max_age_s=7 * DAY, clock=clock, overflow="drop-oldest"
    ) as journal:
        await append_new(journal, 3)
        clock.now += 2 * DAY
        await append_new(journal, 3)
        await journal.ack("bridge", 2)
        clock.now = T0 + 7 * DAY - 1
        assert await journal.enforce_bounds() == PruneReport(0, 0, None)
        clock.now = T0 + 7 * DAY + 3600
        assert await journal.enforce_bounds() == PruneReport(2, 1, (3, 3))
        assert await stored_seqs(journal) == [4, 5, 6]
        oldest = (await journal.stats()).oldest_created_at
        assert oldest == T0 + 2 * DAY
    assert drop_lines(caplog) == [
        "event=journal_drop policy=drop-oldest dropped=1 seq_from=3 seq_to=3 reason=max_age"
    ]


async def test_max_age_with_reject_new_keeps_undelivered_entries(path: Path) -> None:
    clock = FakeClock()
    async with Journal(
        path, sinks=["bridge"], max_age_s=7 * DAY, overflow="reject-new", clock=clock
    ) as journal:
        await append_new(journal, 4)
        await journal.ack("bridge", 2)
        clock.now += 8 * DAY
        assert await journal.enforce_bounds() == PruneReport(2, 0, None)
        assert await stored_seqs(journal) == [3, 4]


async def test_without_sinks_everything_counts_as_delivered(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    async with Journal(path, sinks=[], max_bytes=3 * ROW) as journal:
        for _ in range(5):
            await append_new(journal, 1)
        assert (await journal.stats()).entries == 3
        newest = await journal.latest("dev-1", "temp")
        assert newest is not None and newest.seq == 5
    assert drop_lines(caplog) == []


async def test_size_accounting_is_recomputed_the_same_on_open(path: Path) -> None:
    async with Journal(path, sinks=["bridge"], max_bytes=10_000, overflow="drop-oldest") as journal:
        for size in (100, 250, 4000, 17, 3000, 900, 2500):
            (seq,) = await journal.next_sequences(1)
            await journal.append([observation(seq, size=size)])
        await journal.ack("bridge", 3)
        running = await journal.stats()
        assert running.bytes <= 10_000
    async with Journal(path, sinks=["bridge"], max_bytes=10_000, overflow="drop-oldest") as journal:
        assert await journal.stats() == running
    raw = sqlite3.connect(path)
    try:
        (envelope_bytes,) = raw.execute("SELECT sum(length(envelope)) FROM entries").fetchone()
    finally:
        raw.close()
    assert running.bytes == envelope_bytes + running.entries * ROW_OVERHEAD_BYTES


# -- the file --------------------------------------------------------------------------------


async def test_the_file_is_in_wal_mode_with_the_chosen_synchronous_level(path: Path) -> None:
    levels: tuple[tuple[Literal["normal", "full"], int], ...] = (("full", 2), ("normal", 1))
    for level, pragma_value in levels:
        async with Journal(path, sinks=["bridge"], synchronous=level) as journal:
            await append_new(journal, 1)  # the first reservation syncs at FULL, then restores
            synchronous = await on_connection(
                journal, lambda c: c.execute("PRAGMA synchronous").fetchone()[0]
            )
            assert synchronous == pragma_value
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


async def test_open_is_idempotent_close_is_safe_twice_and_closed_calls_fail(path: Path) -> None:
    journal = Journal(path, sinks=["bridge"])
    await journal.open()
    await append_new(journal, 2)
    await journal.open()
    assert (await journal.stats()).entries == 2
    await journal.close()
    await journal.close()
    with pytest.raises(JournalError, match="not open"):
        await journal.next_sequences(1)
    with pytest.raises(JournalError, match="not open"):
        await journal.stats()


async def test_a_file_that_is_not_a_database_raises_journal_error(path: Path) -> None:
    await asyncio.to_thread(path.write_bytes, b"this is not sqlite" * 100)
    journal = Journal(path, sinks=["bridge"])
    with pytest.raises(JournalError, match=str(path)):
        await journal.open()
    with pytest.raises(JournalError, match="not open"):
        await journal.stats()


async def test_disk_full_raises_journal_error_stores_nothing_and_stays_usable(path: Path) -> None:
    """SQLITE_FULL is produced for real by capping the database with PRAGMA max_page_count (a
    real sqlite limit, cheaper than filling a filesystem); the cap is set on the journal's own
    connection."""
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 3)
        before = await journal.stats()
        seqs = await journal.next_sequences(256)
        batch = [observation(s, size=4000) for s in seqs]
        # clamps to the current size
        await on_connection(journal, lambda c: c.execute("PRAGMA max_page_count = 1"))
        with pytest.raises(JournalError) as raised:
            await journal.append(batch)
        assert not isinstance(raised.value, JournalFull)
        assert str(path) in str(raised.value)
        assert "full" in str(raised.value)
        assert await journal.stats() == before
        assert await stored_seqs(journal) == [1, 2, 3]

        await on_connection(journal, lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        await journal.append(batch)
        assert await stored_seqs(journal) == [1, 2, 3, *seqs]
    async with Journal(path, sinks=["bridge"]) as journal:
        assert (await journal.stats()).entries == 3 + 256


async def test_a_read_only_database_raises_journal_error_and_recovers(path: Path) -> None:
    """Read-only is produced with PRAGMA query_only on the journal's connection (real sqlite
    SQLITE_READONLY): file permissions cannot stop the root user these tests may run as."""
    async with Journal(path, sinks=["bridge"]) as journal:
        appended = await append_new(journal, 5)
        await on_connection(journal, lambda c: c.execute("PRAGMA query_only = 1"))
        with pytest.raises(JournalError, match="read-only"):
            await journal.append([observation(6)])
        with pytest.raises(JournalError, match=str(path)):
            await journal.ack("bridge", 5)
        assert await journal.cursor("bridge") == 0
        await on_connection(journal, lambda c: c.execute("PRAGMA query_only = 0"))
        after = await journal.next_sequences(2)
        assert list(after) == [6, 7]
        await journal.append([observation(s) for s in after])
        await journal.ack("bridge", 5)
        assert await stored_seqs(journal) == [*appended, *after]


# -- lookups for the oracle ------------------------------------------------------------------


async def test_oracle_lookups_by_sequence_journal_time_and_sensor(path: Path) -> None:
    clock = FakeClock()
    async with Journal(path, sinks=["bridge"], clock=clock) as j:
        first = await append_new(j, 2, sensor="temp")
        clock.now += 60
        second = await append_new(j, 1, sensor="temp") + await append_new(j, 1, sensor="hum")
        await append_new(j, 1, device="dev-2", sensor="co2")
        entry = await j.entry(first[1])
        assert entry is not None and (entry.device_id, entry.sensor) == ("dev-1", "temp")
        assert await j.entry(999) is None
        at_t0 = await j.latest_at("dev-1", "temp", T0)
        assert at_t0 is not None and at_t0.seq == first[1]
        later = await j.latest_at("dev-1", "temp", T0 + 60)
        assert later is not None and later.seq == second[0]
        assert await j.latest_at("dev-1", "temp", T0 - 1) is None
        assert await j.sensors_of("dev-1") == ["hum", "temp"]
        assert await j.sensors_of("dev-3") == []


# -- the thread rule -------------------------------------------------------------------------


async def test_append_with_builds_the_batch_in_the_journal_thread_in_one_call(path: Path) -> None:
    seen: dict[str, object] = {}

    def make(seqs: range) -> list[Observation]:
        seen["thread"] = threading.current_thread()
        seen["seqs"] = list(seqs)
        return [observation(s, counter=10 + s) for s in seqs]

    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 2)
        previous, obs = await journal.append_with(3, make)
        assert previous == 2
        assert [o.gateway_sequence for o in obs] == seen["seqs"] == [3, 4, 5]
        assert await stored_seqs(journal) == [1, 2, 3, 4, 5]
        assert (await journal.last_counters())["dev-1"] == 15
    worker = seen["thread"]
    assert isinstance(worker, threading.Thread)
    assert worker is not threading.current_thread()
    assert worker.name.startswith("journal")
    assert not worker.is_alive()  # leaving the block ended the journal's thread


async def test_a_failing_builder_appends_nothing_and_leaves_no_gap(
    path: Path,
) -> None:
    def broken(seqs: range) -> list[Observation]:
        raise ValueError("the signer failed")

    async with Journal(path, sinks=["bridge"]) as journal:
        with pytest.raises(ValueError, match="signer failed"):
            await journal.append_with(2, broken)
        previous, obs = await journal.append_with(1, lambda seqs: [observation(seqs[0])])
        assert previous == 0
        assert obs[0].gateway_sequence == 1  # nothing signed with 1 and 2 ever left
        assert await stored_seqs(journal) == [1]


async def test_the_connection_refuses_every_thread_but_the_journals(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 1)
        conn = journal._core._conn  # white-box: reach past the thread rule on purpose
        assert conn is not None
        with pytest.raises(sqlite3.ProgrammingError, match="thread"):
            conn.execute("SELECT count(*) FROM entries")  # from the event loop's thread
        with pytest.raises(sqlite3.ProgrammingError, match="thread"):
            await asyncio.to_thread(conn.execute, "SELECT count(*) FROM entries")
        assert (
            await on_connection(
                journal, lambda c: c.execute("SELECT count(*) FROM entries").fetchone()[0]
            )
            == 1
        )


async def test_latest_each_reads_several_sensors_in_one_call(path: Path) -> None:
    async with Journal(path, sinks=["bridge"]) as journal:
        await append_new(journal, 2, device="dev-a", sensor="temp")
        await append_new(journal, 1, device="dev-b", sensor="hum")
        found = await journal.latest_each([("dev-b", "hum"), ("dev-c", "temp"), ("dev-a", "temp")])
        assert [(e.device_id, e.sensor, e.seq) for e in found] == [
            ("dev-b", "hum", 3),
            ("dev-a", "temp", 2),
        ]


# Modules that may import sqlite3: the journal's package, and the small stores' base
# (agent/sqlitestore.py).
JOURNAL_PACKAGE = "agent/journal/"


def sqlite_owner(rel: str) -> bool:
    return rel.startswith(JOURNAL_PACKAGE) or rel == "agent/sqlitestore.py"


def thread_owner(rel: str) -> bool:
    """The journal, and the shared thread owner with the stores built on it (their own
    `_worker` and `_call`)."""
    return sqlite_owner(rel) or rel == "agent/threadowner.py"


# What reaches the journal's connection or thread: the facade's core, worker and thread call.
JOURNAL_PRIVATE = {
    "_core",
    "_worker",
    "_call",
    "_JournalCore",
    "JournalCore",
    "JournalReads",
    "JournalFile",
}


def thread_rule_breaches(rel: str, source: str) -> list[str]:
    """Where module `rel` (a path under the repository) could reach the journal's sqlite
    connection without going through its thread: importing sqlite3 (for a module that is not an
    owner), importing a private name of agent.journal, or using the facade's private parts."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sqlite3" and not sqlite_owner(rel):
                    found.append(f"{rel}:{node.lineno} imports sqlite3")
        elif isinstance(node, ast.ImportFrom):
            if node.module == "sqlite3" and not sqlite_owner(rel):
                found.append(f"{rel}:{node.lineno} imports from sqlite3")
            inside = (node.module or "").startswith("agent.journal")
            if inside and not rel.startswith(JOURNAL_PACKAGE):
                for alias in node.names:
                    if alias.name.startswith("_") or alias.name in JOURNAL_PRIVATE:
                        found.append(f"{rel}:{node.lineno} imports agent.journal.{alias.name}")
        elif isinstance(node, ast.Attribute | ast.Name) and not thread_owner(rel):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            if name in JOURNAL_PRIVATE:
                found.append(f"{rel}:{node.lineno} uses {name}")
    return found


def test_no_module_but_the_journal_touches_its_connection_or_its_thread() -> None:
    breaches: list[str] = []
    for file in sorted((ROOT / "agent").rglob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        breaches += thread_rule_breaches(rel, file.read_text(encoding="utf-8"))
    assert breaches == []


def test_the_thread_rule_check_finds_a_module_that_breaks_it() -> None:
    """The check above would see a breach: here are three, in a module that is not the journal."""
    rogue = textwrap.dedent(
        """
        import sqlite3
        from agent.journal import _JournalCore

        async def peek(journal):
            return journal._core._conn.execute("SELECT 1")
        """
    )
    assert len(thread_rule_breaches("agent/bridge.py", rogue)) == 3
    for file in sorted((ROOT / "agent" / "journal").glob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        assert thread_rule_breaches(rel, file.read_text(encoding="utf-8")) == []
