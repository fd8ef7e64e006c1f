"""Journal append throughput against a baseline measured in the same run: raw sqlite
executemany of the same rows into a bare table, same WAL and synchronous settings.

Run: python bench/journal_bench.py [--dir DIR] [--seconds S]   (about 15 s with the defaults)
"""

from __future__ import annotations

import argparse
import dataclasses
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from agent.journal import Journal
from agent.model import AuthMethod, Observation, Reading, Transport

Sync = Literal["normal", "full"]
SYNCS: tuple[Sync, ...] = ("normal", "full")
BATCHES = (1, 32, 256)
ROUNDS = 2  # alternate journal and baseline runs, keep the best of each

# Roughly the JSON transport form of one signed observation.
ENVELOPE = (
    b'{"v":1,"gateway":"0x' + b"ab" * 20 + b'","seq":0,"device":"dev-0001","sensor":"temp",'
    b'"value":"21.5","unit":"Cel","timestamp":1700000000,"counter":1,"transport":"mqtt",'
    b'"auth":"hmac","digest":"0x' + b"cd" * 32 + b'","signature":"0x' + b"ef" * 65 + b'"}'
)


def template_batch(size: int) -> list[Observation]:
    """`size` observations from 8 devices; their sequences are replaced before each append."""
    batch = []
    for i in range(size):
        reading = Reading(
            device_id=f"dev-{i % 8:04d}",
            sensor="temp",
            value=215,
            exponent=-1,
            unit="Cel",
            timestamp=1_700_000_000,
            counter=i + 1,
            transport=Transport.MQTT,
            auth=AuthMethod.HMAC,
        )
        batch.append(
            Observation(
                reading=reading,
                gateway_sequence=0,
                gateway="0x" + "ab" * 20,
                digest=bytes(32),
                signature=bytes(65),
                envelope=ENVELOPE,
            )
        )
    return batch


def run_timed(step: Callable[[], float], seconds: float) -> tuple[int, float]:
    """Call `step` (which returns the seconds it spent in the code under test) until that time
    adds up to `seconds`; return the number of calls and the time."""
    calls, spent = 0, 0.0
    while spent < seconds:
        spent += step()
        calls += 1
    return calls, spent


def bench_journal(directory: Path, sync: Sync, size: int, seconds: float) -> float:
    """Observations per second through next_sequences + append."""
    template = template_batch(size)
    # The journal's synchronous core, driven from this one thread as Journal's worker drives
    # it: the bench measures the SQL cost of numbering+append, not the event loop's thread hop.
    journal = Journal(
        directory / f"journal-{sync}-{size}.sqlite",
        sinks=["bridge"],
        synchronous=sync,
        max_bytes=2**40,  # measure appends, not pruning
    )._core
    journal.open()
    try:

        def timed_step() -> float:
            start = time.perf_counter()
            seqs = journal.next_sequences(size)
            reserve = time.perf_counter() - start
            # Stamping sequences stands in for signing; it is not the journal's cost.
            batch = [
                dataclasses.replace(o, gateway_sequence=s)
                for o, s in zip(template, seqs, strict=True)
            ]
            start = time.perf_counter()
            journal.append(batch)
            return reserve + time.perf_counter() - start

        calls, spent = run_timed(timed_step, seconds)
    finally:
        journal.close()
    return calls * size / spent


def bench_raw(directory: Path, sync: Sync, size: int, seconds: float, *, indexed: bool) -> float:
    """Observations per second through a plain executemany, one transaction per batch.

    Not indexed: the baseline, a bare table. Indexed: the journal's own tables, index and
    counter upsert, which shows how much of the gap is the schema and how much the journal.
    """
    path = directory / f"raw-{'indexed' if indexed else 'bare'}-{sync}-{size}.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync.upper()}")
        conn.execute(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, device_id TEXT, sensor TEXT, "
            "counter INTEGER, created_at REAL, envelope BLOB)"
        )
        if indexed:
            conn.execute(
                "CREATE INDEX entries_device_sensor_seq ON entries (device_id, sensor, seq)"
            )
            conn.execute(
                "CREATE TABLE device_counters (device_id TEXT PRIMARY KEY, counter INTEGER) "
                "WITHOUT ROWID"
            )
        template = template_batch(size)
        next_seq = 1

        def step() -> float:
            nonlocal next_seq
            now = time.time()
            rows = [
                (
                    next_seq + i,
                    o.reading.device_id,
                    o.reading.sensor,
                    o.reading.counter,
                    now,
                    o.envelope,
                )
                for i, o in enumerate(template)
            ]
            counters = {o.reading.device_id: o.reading.counter for o in template}
            next_seq += size
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)
            if indexed:
                conn.executemany(
                    "INSERT INTO device_counters VALUES (?, ?) ON CONFLICT (device_id) "
                    "DO UPDATE SET counter = max(counter, excluded.counter)",
                    list(counters.items()),
                )
            conn.execute("COMMIT")
            return time.perf_counter() - start

        calls, spent = run_timed(step, seconds)
    finally:
        conn.close()
    return calls * size / spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="where the database files go (default: temp)")
    parser.add_argument(
        "--seconds", type=float, default=0.3, help="measured time per run (default 0.3)"
    )
    args = parser.parse_args(argv)
    seconds: float = args.seconds

    started = time.perf_counter()
    results: list[tuple[Sync, int, float, float, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="journal-bench-") as tmp:
        directory = Path(tmp)
        for sync in SYNCS:
            for size in BATCHES:
                journal_best = bare_best = indexed_best = 0.0
                for round_no in range(ROUNDS):
                    run_dir = directory / f"round{round_no}"
                    run_dir.mkdir(exist_ok=True)
                    bare = bench_raw(run_dir, sync, size, seconds, indexed=False)
                    journal = bench_journal(run_dir, sync, size, seconds)
                    indexed = bench_raw(run_dir, sync, size, seconds, indexed=True)
                    bare_best = max(bare_best, bare)
                    journal_best = max(journal_best, journal)
                    indexed_best = max(indexed_best, indexed)
                results.append((sync, size, journal_best, bare_best, indexed_best))
        where = directory.parent

    print(
        "journal reserve+append vs raw sqlite executemany of the same rows "
        "(WAL, one transaction per batch)"
    )
    print(
        f"sqlite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, files under {where}; "
        "'same schema' = raw executemany into the journal's tables, index and counter upsert"
    )
    header = (
        f"{'sync':<7}{'batch':>6}{'journal obs/s':>15}{'bare obs/s':>12}{'ratio':>7}"
        f"{'same schema':>13}{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for sync, size, journal_rate, bare_rate, indexed_rate in results:
        print(
            f"{sync:<7}{size:>6}{journal_rate:>15,.0f}{bare_rate:>12,.0f}"
            f"{journal_rate / bare_rate:>7.2f}{indexed_rate:>13,.0f}"
            f"{journal_rate / indexed_rate:>7.2f}"
        )
    print(
        f"ratio = journal / baseline; best of {ROUNDS} runs of {seconds:g} s each; "
        f"took {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
