"""Journal: durable sequences, ordered delivery with acknowledged watermarks, and its bounds.

Every test uses a real sqlite file under tmp_path; observations carry fake envelope bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import pytest

from agent.errors import JournalError, JournalFull
from agent.journal import ROW_OVERHEAD_BYTES, Journal, PruneReport
from agent.model import AuthMethod, Observation, Reading, Transport

ROOT = Path(__file__).resolve().parents[2]
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


def append_new(
    journal: Journal, n: int, *, device: str = "dev-1", sensor: str = "temp"
) -> list[int]:
    seqs = list(journal.reserve_sequences(n))
    journal.append([observation(s, device=device, sensor=sensor) for s in seqs])
    return seqs


def stored_seqs(journal: Journal) -> list[int]:
    """Every stored sequence, read as the "bridge" sink that all these journals have."""
    return [e.seq for e in journal.read_after("bridge", 0, 10_000)]


def drop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=journal_drop" in r.getMessage()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


# -- sequences -------------------------------------------------------------------------------


def test_sequences_start_at_one_and_increase_across_close_and_reopen(path: Path) -> None:
    handed_out: list[int] = []
    with Journal(path, sinks=["bridge"], sequence_block=10) as journal:
        first = journal.reserve_sequences(3)
        assert list(first) == [1, 2, 3]
        journal.append([observation(s) for s in first])
        handed_out += first
        handed_out += journal.reserve_sequences(9)  # crosses the first block
    for _ in range(2):
        with Journal(path, sinks=["bridge"], sequence_block=10) as journal:
            handed_out += journal.reserve_sequences(4)
    assert handed_out == sorted(set(handed_out))
    assert len(handed_out) == 3 + 9 + 4 + 4


def test_sequences_increase_after_a_fake_crash(path: Path, tmp_path: Path) -> None:
    """Fake crash: while the first journal is still open (never closed, never checkpointed), its
    database and -wal files are copied elsewhere, which is what a SIGKILL leaves on disk, and a
    second Journal opens the copy."""
    journal = Journal(path, sinks=["bridge"], sequence_block=5)
    journal.open()
    appended = append_new(journal, 7)
    reserved_only = list(journal.reserve_sequences(2))
    crashed = tmp_path / "crashed" / "journal.sqlite"
    crashed.parent.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{crashed}{suffix}")
    journal.close()

    with Journal(crashed, sinks=["bridge"], sequence_block=5) as recovered:
        assert stored_seqs(recovered) == appended
        after = list(recovered.reserve_sequences(3))
        assert min(after) > max(appended + reserved_only)
        recovered.append([observation(s) for s in after])
        assert stored_seqs(recovered) == appended + after


def test_sigkill_between_reserve_and_append_never_reuses_a_sequence(path: Path) -> None:
    """A real crash: a child process appends, reserves more, and is killed with SIGKILL before it
    appends the second reservation."""
    child = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from agent.journal import Journal
        from tests.unit.test_journal import observation

        journal = Journal(Path(sys.argv[1]), sinks=["bridge"], sequence_block=4)
        journal.open()
        appended = list(journal.reserve_sequences(3))
        journal.append([observation(s) for s in appended])
        reserved = list(journal.reserve_sequences(3))
        print(" ".join(map(str, appended + reserved)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", child, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    handed_out = [int(s) for s in done.stdout.split()]
    assert handed_out == [1, 2, 3, 4, 5, 6]

    with Journal(path, sinks=["bridge"], sequence_block=4) as journal:
        assert stored_seqs(journal) == [1, 2, 3]
        again = list(journal.reserve_sequences(5))
    assert min(again) > max(handed_out)


def test_append_refuses_sequences_not_reserved_or_not_above_the_last(path: Path) -> None:
    with Journal(path, sinks=["bridge"]) as journal:
        seqs = journal.reserve_sequences(3)
        with pytest.raises(JournalError, match="never handed out"):
            journal.append([observation(seqs[-1] + 1)])
        journal.append([observation(seqs[1])])
        with pytest.raises(JournalError, match="not above 2"):
            journal.append([observation(seqs[0])])
        with pytest.raises(JournalError, match="not above"):
            journal.append([observation(seqs[2]), observation(seqs[2])])
        assert stored_seqs(journal) == [2]


# -- appending and reading -------------------------------------------------------------------


def test_append_then_read_after_returns_entries_in_sequence_order(path: Path) -> None:
    clock = FakeClock()
    with Journal(path, sinks=["bridge"], clock=clock) as journal:
        seqs = list(journal.reserve_sequences(6))
        batch = [observation(s, device=f"dev-{s % 2}") for s in seqs]
        journal.append([batch[i] for i in (3, 0, 5, 1, 4, 2)])

        entries = journal.read_after("bridge", 0, 100)
        assert [e.seq for e in entries] == seqs
        assert [e.envelope for e in entries] == [o.envelope for o in batch]
        assert entries[1].device_id == "dev-0" and entries[1].sensor == "temp"
        assert {e.created_at for e in entries} == {T0}
        assert [e.seq for e in journal.read_after("bridge", 3, 2)] == [4, 5]
        assert journal.read_after("bridge", 6, 10) == []


def test_a_batch_of_256_is_one_transaction(path: Path) -> None:
    with Journal(path, sinks=["bridge"]) as journal:
        seqs = journal.reserve_sequences(256)
        statements: list[str] = []
        assert journal._conn is not None  # white-box: trace what sqlite executes
        journal._conn.set_trace_callback(statements.append)
        journal.append([observation(s) for s in seqs])
        journal._conn.set_trace_callback(None)
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
            "BEGIN IMMEDIATE",
            "COMMIT",
        ]
        assert journal.stats().entries == 256


def test_latest_returns_the_newest_entry_for_a_device_sensor(path: Path) -> None:
    with Journal(path, sinks=["bridge"]) as journal:
        append_new(journal, 2, device="dev-a", sensor="temp")
        append_new(journal, 1, device="dev-a", sensor="hum")
        append_new(journal, 3, device="dev-b", sensor="temp")
        latest = journal.latest("dev-a", "temp")
        assert latest is not None and latest.seq == 2
        hum = journal.latest("dev-a", "hum")
        assert hum is not None and hum.seq == 3
        assert journal.latest("dev-c", "temp") is None


def test_unknown_sink_raises_journal_error(path: Path) -> None:
    with Journal(path, sinks=["bridge"]) as journal:
        append_new(journal, 1)
        for call in (
            lambda: journal.ack("oracle", 1),
            lambda: journal.cursor("oracle"),
            lambda: journal.read_after("oracle", 0, 10),
        ):
            with pytest.raises(JournalError, match="unknown sink 'oracle'"):
                call()


# -- acknowledgements ------------------------------------------------------------------------


def test_ack_persists_and_the_backlog_replays_in_order_after_reopen(path: Path) -> None:
    sinks = ["bridge", "chain"]
    with Journal(path, sinks=sinks) as journal:
        append_new(journal, 10)
        assert journal.cursor("bridge") == 0
        journal.ack("bridge", 4)
        journal.ack("bridge", 2)  # lower: ignored
        assert journal.cursor("bridge") == 4
        with pytest.raises(JournalError, match="last appended is 10"):
            journal.ack("bridge", 11)

    with Journal(path, sinks=sinks) as journal:
        assert journal.cursor("bridge") == 4
        assert journal.cursor("chain") == 0
        replay = journal.read_after("bridge", journal.cursor("bridge"), 100)
        assert [e.seq for e in replay] == [5, 6, 7, 8, 9, 10]
        stats = journal.stats()
        assert stats.backlog == {"bridge": 6, "chain": 10}
        assert stats.last_seq == 10


def test_acknowledged_entries_stay_until_the_bounds_need_their_room(path: Path) -> None:
    with Journal(path, sinks=["bridge"]) as journal:
        append_new(journal, 5)
        journal.ack("bridge", 5)
        assert journal.enforce_bounds() == PruneReport(0, 0, None)
        assert journal.stats().entries == 5
        latest = journal.latest("dev-1", "temp")
        assert latest is not None and latest.seq == 5


# -- device counters -------------------------------------------------------------------------


def test_last_counters_survive_reopen_and_pruning(path: Path) -> None:
    clock = FakeClock()
    with Journal(path, sinks=["bridge"], max_bytes=100 * ROW, clock=clock) as journal:
        seqs = journal.reserve_sequences(4)
        journal.append(
            [
                observation(seqs[0], device="dev-a", counter=7),
                observation(seqs[1], device="dev-a", counter=9),
                observation(seqs[2], device="dev-b", counter=2**64 - 1),  # uint64 max
                observation(seqs[3], device="dev-a", counter=8),
            ]
        )
        expected = {"dev-a": 9, "dev-b": 2**64 - 1}
        assert journal.last_counters() == expected
        journal.ack("bridge", 4)

    clock.now += 30 * DAY
    with Journal(path, sinks=["bridge"], max_bytes=100 * ROW, clock=clock) as journal:
        assert journal.last_counters() == expected
        assert journal.enforce_bounds().delivered_removed == 4
        assert journal.stats().entries == 0
        assert journal.last_counters() == expected
        assert journal.stats().last_seq == 4
    with Journal(path, sinks=["bridge"]) as journal:
        assert journal.last_counters() == expected
        assert journal.stats().last_seq == 4


# -- bounds ----------------------------------------------------------------------------------


def test_drop_oldest_removes_delivered_first_then_oldest_undelivered_with_one_log_line(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    with Journal(path, sinks=["bridge"], max_bytes=10 * ROW, overflow="drop-oldest") as journal:
        append_new(journal, 8)
        journal.ack("bridge", 3)
        append_new(journal, 4)  # needs 2 rows of room: delivered 1 and 2 go, nothing else
        assert stored_seqs(journal) == list(range(3, 13))
        assert drop_lines(caplog) == []

        append_new(journal, 3)  # needs 3 rows: delivered 3, then undelivered 4 and 5
        assert stored_seqs(journal) == list(range(6, 16))
        assert drop_lines(caplog) == [
            "event=journal_drop policy=drop-oldest dropped=2 seq_from=4 seq_to=5 reason=max_bytes"
        ]
        stats = journal.stats()
        assert (stats.entries, stats.bytes) == (10, 10 * ROW)


def test_enforce_bounds_drops_to_a_smaller_max_bytes_after_reopen(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    with Journal(path, sinks=["bridge"]) as journal:
        append_new(journal, 10)
        journal.ack("bridge", 2)
    with Journal(path, sinks=["bridge"], max_bytes=5 * ROW) as journal:
        assert journal.enforce_bounds() == PruneReport(2, 3, (3, 5))
        assert stored_seqs(journal) == [6, 7, 8, 9, 10]
        assert journal.enforce_bounds() == PruneReport(0, 0, None)
    assert len(drop_lines(caplog)) == 1


def test_reject_new_raises_journal_full_and_keeps_old_entries(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    with Journal(path, sinks=["bridge"], max_bytes=10 * ROW, overflow="reject-new") as journal:
        append_new(journal, 10)
        before = journal.stats()
        (extra,) = journal.reserve_sequences(1)
        with pytest.raises(JournalFull) as raised:
            journal.append([observation(extra)])
        message = str(raised.value)
        for needle in (str(path), "journal.max_bytes", "journal.overflow", str(10 * ROW)):
            assert needle in message
        assert stored_seqs(journal) == list(range(1, 11))
        assert journal.stats() == before
        assert journal.enforce_bounds() == PruneReport(0, 0, None)

        journal.ack("bridge", 1)  # room now comes from a delivered entry
        journal.append([observation(extra)])
        assert stored_seqs(journal) == list(range(2, 12))
    assert drop_lines(caplog) == []


def test_max_age_removes_delivered_then_drops_old_undelivered(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    clock = FakeClock()
    with Journal(path, sinks=["bridge"], max_age_s=7 * DAY, clock=clock) as journal:
        append_new(journal, 3)
        clock.now += 2 * DAY
        append_new(journal, 3)
        journal.ack("bridge", 2)
        clock.now = T0 + 7 * DAY - 1
        assert journal.enforce_bounds() == PruneReport(0, 0, None)
        clock.now = T0 + 7 * DAY + 3600
        assert journal.enforce_bounds() == PruneReport(2, 1, (3, 3))
        assert stored_seqs(journal) == [4, 5, 6]
        oldest = journal.stats().oldest_created_at
        assert oldest == T0 + 2 * DAY
    assert drop_lines(caplog) == [
        "event=journal_drop policy=drop-oldest dropped=1 seq_from=3 seq_to=3 reason=max_age"
    ]


def test_max_age_with_reject_new_keeps_undelivered_entries(path: Path) -> None:
    clock = FakeClock()
    with Journal(
        path, sinks=["bridge"], max_age_s=7 * DAY, overflow="reject-new", clock=clock
    ) as journal:
        append_new(journal, 4)
        journal.ack("bridge", 2)
        clock.now += 8 * DAY
        assert journal.enforce_bounds() == PruneReport(2, 0, None)
        assert stored_seqs(journal) == [3, 4]


def test_without_sinks_everything_counts_as_delivered(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.journal")
    with Journal(path, sinks=[], max_bytes=3 * ROW) as journal:
        for _ in range(5):
            append_new(journal, 1)
        assert journal.stats().entries == 3
        newest = journal.latest("dev-1", "temp")
        assert newest is not None and newest.seq == 5
    assert drop_lines(caplog) == []


def test_size_accounting_is_recomputed_the_same_on_open(path: Path) -> None:
    with Journal(path, sinks=["bridge"], max_bytes=10_000) as journal:
        for size in (100, 250, 4000, 17, 3000, 900, 2500):
            (seq,) = journal.reserve_sequences(1)
            journal.append([observation(seq, size=size)])
        journal.ack("bridge", 3)
        running = journal.stats()
        assert running.bytes <= 10_000
    with Journal(path, sinks=["bridge"], max_bytes=10_000) as journal:
        assert journal.stats() == running
    raw = sqlite3.connect(path)
    try:
        (envelope_bytes,) = raw.execute("SELECT sum(length(envelope)) FROM entries").fetchone()
    finally:
        raw.close()
    assert running.bytes == envelope_bytes + running.entries * ROW_OVERHEAD_BYTES


# -- the file --------------------------------------------------------------------------------


def test_the_file_is_in_wal_mode_with_the_chosen_synchronous_level(path: Path) -> None:
    levels: tuple[tuple[Literal["normal", "full"], int], ...] = (("full", 2), ("normal", 1))
    for level, pragma_value in levels:
        with Journal(path, sinks=["bridge"], synchronous=level) as journal:
            append_new(journal, 1)  # the first reservation syncs at FULL, then restores
            assert journal._conn is not None  # white-box: the journal's own connection
            assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == pragma_value
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_open_is_idempotent_close_is_safe_twice_and_closed_calls_fail(path: Path) -> None:
    journal = Journal(path, sinks=["bridge"])
    journal.open()
    append_new(journal, 2)
    journal.open()
    assert journal.stats().entries == 2
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="not open"):
        journal.reserve_sequences(1)
    with pytest.raises(JournalError, match="not open"):
        journal.stats()


def test_a_file_that_is_not_a_database_raises_journal_error(path: Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)
    journal = Journal(path, sinks=["bridge"])
    with pytest.raises(JournalError, match=str(path)):
        journal.open()
    with pytest.raises(JournalError, match="not open"):
        journal.stats()


def test_disk_full_raises_journal_error_stores_nothing_and_stays_usable(path: Path) -> None:
    """SQLITE_FULL is produced for real by capping the database with PRAGMA max_page_count (a
    real sqlite limit, cheaper than filling a filesystem); the cap is set on the journal's own
    connection."""
    with Journal(path, sinks=["bridge"]) as journal:
        append_new(journal, 3)
        before = journal.stats()
        seqs = journal.reserve_sequences(256)
        batch = [observation(s, size=4000) for s in seqs]
        conn = journal._conn
        assert conn is not None
        conn.execute("PRAGMA max_page_count = 1")  # clamps to the current size
        with pytest.raises(JournalError) as raised:
            journal.append(batch)
        assert not isinstance(raised.value, JournalFull)
        assert str(path) in str(raised.value)
        assert "full" in str(raised.value)
        assert journal.stats() == before
        assert stored_seqs(journal) == [1, 2, 3]

        conn.execute("PRAGMA max_page_count = 1073741823")
        journal.append(batch)
        assert stored_seqs(journal) == [1, 2, 3, *seqs]
    with Journal(path, sinks=["bridge"]) as journal:
        assert journal.stats().entries == 3 + 256


def test_a_read_only_database_raises_journal_error_and_recovers(path: Path) -> None:
    """Read-only is produced with PRAGMA query_only on the journal's connection (real sqlite
    SQLITE_READONLY): file permissions cannot stop the root user these tests may run as."""
    with Journal(path, sinks=["bridge"], sequence_block=5) as journal:
        appended = append_new(journal, 5)
        conn = journal._conn
        assert conn is not None
        conn.execute("PRAGMA query_only = 1")
        with pytest.raises(JournalError, match="read-only"):
            journal.reserve_sequences(1)  # needs a new block: the mark cannot be written
        with pytest.raises(JournalError, match=str(path)):
            journal.ack("bridge", 5)
        assert journal.cursor("bridge") == 0
        conn.execute("PRAGMA query_only = 0")
        after = journal.reserve_sequences(2)
        assert min(after) > max(appended)
        journal.append([observation(s) for s in after])
        journal.ack("bridge", 5)
        assert stored_seqs(journal) == [*appended, *after]


# -- lookups for the oracle ------------------------------------------------------------------


def test_oracle_lookups_by_sequence_journal_time_and_sensor(path: Path) -> None:
    clock = FakeClock()
    with Journal(path, sinks=["bridge"], clock=clock) as j:
        first = append_new(j, 2, sensor="temp")
        clock.now += 60
        second = append_new(j, 1, sensor="temp") + append_new(j, 1, sensor="hum")
        append_new(j, 1, device="dev-2", sensor="co2")
        entry = j.entry(first[1])
        assert entry is not None and (entry.device_id, entry.sensor) == ("dev-1", "temp")
        assert j.entry(999) is None
        at_t0 = j.latest_at("dev-1", "temp", T0)
        assert at_t0 is not None and at_t0.seq == first[1]
        later = j.latest_at("dev-1", "temp", T0 + 60)
        assert later is not None and later.seq == second[0]
        assert j.latest_at("dev-1", "temp", T0 - 1) is None
        assert j.sensors_of("dev-1") == ["hum", "temp"]
        assert j.sensors_of("dev-3") == []
