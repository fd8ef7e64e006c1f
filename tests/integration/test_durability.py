"""Nothing accepted goes unaccounted, against real `edgence-agent run` processes and real
Mosquitto brokers: gateway sequences upstream are 1..N after SIGKILLs (only byte-identical
redeliveries repeat), a full journal pauses intake by default (every reading the broker
acknowledged to a device arrives), and with overflow = "drop-oldest" every dropped range is
announced upstream in a signed Dropped statement."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.attest.dropped import verify_dropped
from agent.devices.codecs.frame import encode_frame
from agent.journal import Journal
from agent.localbroker import LocalMosquitto

from .conftest import (
    AgentProcess,
    Collector,
    Device,
    agent_config_dict,
    wait_until,
    write_agent_dir,
)
from .test_delivery_guarantees import Publisher, dedupe_by_sequence, wait_for_all_readings

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
# A journal this small holds ~100 observations: 1,000 readings overflow it many times.
SMALL_JOURNAL = 80_000


def newest_journaled(data_dir: Path) -> int:
    """The highest sequence in a running agent's journal, read-only from this process."""
    path = data_dir / "journal.sqlite"
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            row = conn.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM entries), 0), "
                "coalesce((SELECT value FROM meta WHERE key = 'pruned_upto'), 0))"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0)


def sequences(collector: Collector) -> list[int]:
    return sorted(
        o["message"]["gatewaySequence"] for o in dedupe_by_sequence(collector.raw_observations())
    )


@pytest.mark.slow
def test_sigkill_mid_stream_leaves_upstream_sequences_one_to_n_without_gaps(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Any,
) -> None:
    config, _ = write_agent_dir(tmp_path / "gw", agent_config_dict(local_broker, upstream_broker))
    proc: AgentProcess = agent_process(config)
    proc.start()
    pub = Publisher(device, rate=500)
    pub.start()
    for _ in range(3):
        target = len(collector.raw_observations()) + 300
        wait_until(
            lambda t=target: len(collector.raw_observations()) > t,  # type: ignore[misc]
            30,
            "stream flowing",
        )
        proc.kill()  # SIGKILL mid-stream: no shutdown code runs
        proc.start()
    sent = pub.stop()
    wait_for_all_readings(collector, sent)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # One value per reading, each signed once: N readings are sequences 1..N, no gap, and any
    # repeat upstream was a byte-identical copy (dedupe_by_sequence checks that).
    assert sequences(collector) == list(range(1, sent + 1))


@pytest.mark.slow
def test_a_full_journal_pauses_intake_and_every_acknowledged_reading_arrives(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Any,
) -> None:
    """The issue's case: upstream down, a journal too small for the backlog, a restart during
    the outage. With the default policy the agent stops taking frames (the local broker keeps
    them for its persistent session), and all 1,000 readings the broker acknowledged to the
    device reach upstream once it returns: none refused, none dropped."""
    cfg = agent_config_dict(local_broker, upstream_broker, journal={"max_bytes": SMALL_JOURNAL})
    config, _ = write_agent_dir(tmp_path / "gw", cfg)
    upstream_broker.stop()
    proc: AgentProcess = agent_process(config)
    proc.start()
    for n in range(1, 1001):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))  # PUBACKed
    wait_until(lambda: "event=journal_full_paused" in proc.log_text(), 30, "intake paused")
    held = newest_journaled(tmp_path / "gw" / "data")
    assert 0 < held < 1000
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    proc.start()  # restarted during the outage: nothing is dropped to make room either
    upstream_broker.start()
    wait_for_all_readings(collector, 1000)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    obs = dedupe_by_sequence(collector.raw_observations())
    assert sorted(o["message"]["deviceCounter"] for o in obs) == list(range(1, 1001))
    assert sequences(collector) == list(range(1, 1001))
    log = proc.log_text()
    assert "reason=journal_full" not in log and "event=journal_drop" not in log


@pytest.mark.slow
def test_drop_oldest_announces_every_dropped_range_in_a_signed_statement(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    device: Device,
    agent_process: Any,
) -> None:
    """overflow = "drop-oldest", upstream down, a restart during the outage: readings are
    dropped, and every sequence is then either delivered or inside a verified Dropped
    statement from the gateway (never both, none missing)."""
    cfg = agent_config_dict(
        local_broker,
        upstream_broker,
        journal={"max_bytes": SMALL_JOURNAL, "overflow": "drop-oldest"},
    )
    config, key = write_agent_dir(tmp_path / "gw", cfg)
    data = tmp_path / "gw" / "data"
    upstream_broker.stop()
    proc: AgentProcess = agent_process(config)
    proc.start()
    for n in range(1, 501):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))
    wait_until(lambda: newest_journaled(data) == 500, 30, "500 journaled")
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    proc.start()
    for n in range(501, 1001):
        device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))
    wait_until(lambda: newest_journaled(data) == 1000, 30, "1000 journaled")
    upstream_broker.start()
    collector = Collector(upstream_broker.port)  # a consumer arriving after the outage
    try:
        prefix = f"edgence/{key.address}"

        def statements() -> list[bytes]:
            with collector.lock:
                return [p for t, p, _ in collector.messages if t == f"{prefix}/dropped"]

        def accounted() -> set[int]:
            got = set(sequences(collector))
            for body in statements():
                d = verify_dropped(body)
                got |= set(range(d.first_sequence, d.last_sequence + 1))
            return got

        wait_until(lambda: accounted() == set(range(1, 1001)), 30, "every sequence accounted")
        delivered = set(sequences(collector))
        dropped: set[int] = set()
        for body in statements():
            d = verify_dropped(body)
            assert d.signer == key.address
            assert not dropped & set(range(d.first_sequence, d.last_sequence + 1))
            dropped |= set(range(d.first_sequence, d.last_sequence + 1))
        assert len(dropped) > 500  # it did drop, and said so
        assert not delivered & dropped
        assert delivered | dropped == set(range(1, 1001))
        # The published statements verify with the command a consumer would use.
        lines = tmp_path / "dropped.jsonl"
        lines.write_bytes(b"\n".join(statements()) + b"\n")
        done = subprocess.run(
            [sys.executable, "-m", "agent.cli", "verify", str(lines)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert all(line.startswith("ok dropped ") for line in done.stdout.splitlines())
    finally:
        collector.close()
    wait_until(lambda: "event=drop_announced" in proc.log_text(), 10, "announced")
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0

    async def records() -> list[tuple[int, bool]]:
        async with Journal(data / "journal.sqlite", sinks=["bridge"]) as j:
            return [(d.first_seq, announced) for d, announced in await j.drops()]

    kept = asyncio.run(records())
    assert kept and all(announced for _, announced in kept)  # kept as history, announced
    assert json.loads(lines.read_text().splitlines()[0])["type"] == "Dropped"
