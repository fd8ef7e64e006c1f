"""Device counters in the journal: an enrolled device's under its id, an unauthenticated one's
per transport (`mqtt/dev-1`, agent.frame.counter_key), and forgotten on `devices reset-counter`,
also across a reopen; each key's replay window kept with the observations, resized, upgraded
from a journal that kept only the last counter. A real sqlite journal in a temporary directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import JournalFull
from agent.journal import Journal, read_device_counter
from agent.model import AuthMethod, Observation, Reading, Transport
from agent.replaywindow import ReplayWindow

MAX = 2**64 - 1


def observation(
    seq: int, device: str, counter: int, transport: Transport, auth: AuthMethod
) -> Observation:
    reading = Reading(
        device_id=device,
        sensor="t",
        value=1,
        exponent=0,
        unit="Cel",
        timestamp=1_700_000_000,
        counter=counter,
        transport=transport,
        auth=auth,
    )
    return Observation(
        reading=reading,
        gateway_sequence=seq,
        gateway="0x" + "11" * 20,
        digest=bytes(32),
        signature=bytes(65),
        envelope=b'{"seq":%d}' % seq,
    )


async def test_counters_are_kept_per_transport_for_unauthenticated_devices(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    async with Journal(path, sinks=["bridge"]) as journal:
        seqs = await journal.next_sequences(4)
        await journal.append(
            [
                observation(seqs[0], "dev-1", MAX, Transport.MQTT, AuthMethod.ALLOWLIST),  # spoof
                observation(seqs[1], "dev-1", 5, Transport.SERIAL, AuthMethod.ALLOWLIST),
                observation(seqs[2], "hm-1", 9, Transport.MQTT, AuthMethod.HMAC),
                observation(seqs[3], "bt-1", 3, Transport.BLE, AuthMethod.BTHOME),
            ]
        )
        assert await journal.last_counters() == {
            "mqtt/dev-1": MAX,
            "serial/dev-1": 5,
            "hm-1": 9,
            "bt-1": 3,
        }
        assert await journal.forget_counters(["mqtt/dev-1", "nobody"]) == {"mqtt/dev-1": MAX}
    async with Journal(path, sinks=["bridge"]) as journal:
        assert await journal.last_counters() == {"serial/dev-1": 5, "hm-1": 9, "bt-1": 3}
    assert read_device_counter(path, "hm-1") == 9  # what `pair` continues an enrolled device at


async def append_counters(journal: Journal, device: str, counters: list[int]) -> None:
    seqs = await journal.next_sequences(len(counters))
    await journal.append(
        [
            observation(s, device, c, Transport.SERIAL, AuthMethod.ALLOWLIST)
            for s, c in zip(seqs, counters, strict=True)
        ]
    )


async def test_the_replay_window_is_kept_with_the_observations_across_a_reopen(
    tmp_path: Path,
) -> None:
    """Counters 10, 8 and 6 accepted out of order: after a reopen 9 and 7 may still come (never
    seen), 10, 8 and 6 are replays, and 5 is below a window of 5 (6..10)."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path, sinks=["bridge"], replay_window=5) as journal:
        await append_counters(journal, "dev-1", [10, 8])
        await append_counters(journal, "dev-1", [6])
    async with Journal(path, sinks=["bridge"], replay_window=5) as journal:
        window = (await journal.counter_windows())["serial/dev-1"]
    assert (window.high, window.size) == (10, 5)
    assert [c for c in range(4, 12) if window.violation(c) is None] == [7, 9, 11]
    assert read_device_counter(path, "serial/dev-1") == 10


async def test_a_larger_window_after_a_restart_counts_the_unknown_counters_as_spent(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite"
    async with Journal(path, sinks=["bridge"], replay_window=4) as journal:
        await append_counters(journal, "dev-1", [100, 98])
    async with Journal(path, sinks=["bridge"], replay_window=64) as journal:
        window = (await journal.counter_windows())["serial/dev-1"]
    assert window.size == 64
    assert [c for c in range(30, 101) if window.violation(c) is None] == [97, 99]


async def test_a_batch_the_full_journal_refuses_leaves_the_window_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite"
    async with Journal(
        path, sinks=["bridge"], max_bytes=250, overflow="reject-new", replay_window=8
    ) as journal:
        await append_counters(journal, "dev-1", [5])
        before = await journal.counter_windows()
        with pytest.raises(JournalFull):
            await append_counters(journal, "dev-1", [7, 6, 9])
        assert await journal.counter_windows() == before
    async with Journal(path, sinks=["bridge"], replay_window=8) as journal:
        assert await journal.counter_windows() == before


async def test_a_journal_from_before_windows_keeps_every_counter_up_to_the_last_spent(
    tmp_path: Path,
) -> None:
    """Schema version 1 kept only the last counter: upgraded in place, nothing at or below it
    passes (it cannot be known which were seen), and the next counters work as usual."""
    path = tmp_path / "journal.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE device_counters (device_id TEXT PRIMARY KEY, counter INTEGER NOT NULL)
            WITHOUT ROWID;
        PRAGMA user_version = 1;
        """
    )
    conn.execute("INSERT INTO device_counters VALUES ('hm-1', ?)", (41 - 2**63,))
    conn.commit()
    conn.close()
    async with Journal(path, sinks=["bridge"]) as journal:
        window = (await journal.counter_windows())["hm-1"]
        assert window == ReplayWindow.spent_upto(41, 64)
        seqs = await journal.next_sequences(2)
        await journal.append(
            [
                observation(seqs[0], "hm-1", 44, Transport.MQTT, AuthMethod.HMAC),
                observation(seqs[1], "hm-1", 42, Transport.MQTT, AuthMethod.HMAC),
            ]
        )
    async with Journal(path, sinks=["bridge"]) as journal:
        window = (await journal.counter_windows())["hm-1"]
    assert [c for c in range(30, 46) if window.violation(c) is None] == [43, 45]
