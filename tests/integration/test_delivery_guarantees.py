"""The no-loss promises against real brokers: an upstream outage, a SIGKILLed agent, a
SIGTERMed agent. Duplicates upstream are allowed only as identical copies of one sequence."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.journal import Journal
from agent.localbroker import LocalMosquitto

from .conftest import (
    AgentProcess,
    Collector,
    Device,
    agent_config_dict,
    async_wait_until,
    wait_until,
    write_agent_dir,
)


def delivered(collector: Collector) -> int:
    """Distinct device counters that arrived upstream."""
    return len({o["message"]["deviceCounter"] for o in collector.observations()})


def dedupe_by_sequence(raw: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """First copy of each gateway sequence, in arrival order; asserts copies are identical."""
    first: dict[int, bytes] = {}
    out = []
    for _, payload in raw:
        seq = json.loads(payload)["message"]["gatewaySequence"]
        if seq in first:
            assert first[seq] == payload, f"sequence {seq} reused for different content"
            continue
        first[seq] = payload
        out.append(json.loads(payload))
    return out


class Publisher(threading.Thread):
    """Publishes frames n=1.. for one device at roughly `rate`/s until stopped."""

    def __init__(self, device: Device, rate: float, device_id: str = "dev-1") -> None:
        super().__init__(daemon=True)
        self.device, self.rate, self.device_id = device, rate, device_id
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sent += 1
            frame = encode_frame(self.sent, [("t", self.sent, 0, "Cel")])
            self.device.publish(f"devices/{self.device_id}/up", frame)
            time.sleep(1 / self.rate)

    def stop(self) -> int:
        self.halt.set()
        self.join(10)
        return self.sent


@pytest.mark.slow
async def test_upstream_outage_of_10s_loses_nothing_and_keeps_order(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    running = await start_agent(agent_config_dict(local_broker, upstream_broker))
    pub = Publisher(device, rate=200)
    pub.start()
    await asyncio.sleep(1.0)
    await asyncio.to_thread(upstream_broker.stop)
    during = len(collector.observations())
    await asyncio.sleep(10.0)
    await asyncio.to_thread(upstream_broker.start)
    await asyncio.sleep(1.0)
    sent = await asyncio.to_thread(pub.stop)
    await async_wait_until(
        lambda: delivered(collector) >= sent,
        30,
        f"all {sent} observations upstream",
    )
    obs = dedupe_by_sequence(collector.raw_observations())
    seqs = [o["message"]["gatewaySequence"] for o in obs]
    assert seqs == sorted(seqs), "observations arrived out of order"
    assert [o["message"]["deviceCounter"] for o in obs] == list(range(1, sent + 1))
    # The outage really happened while readings flowed: most of them were journaled meanwhile.
    assert sent - during > 1000
    assert running.agent.metrics.get("frames_rejected") == 0


def wait_for_all_readings(collector: Collector, sent: int) -> None:
    def counters() -> int:
        return len(
            {json.loads(p)["message"]["deviceCounter"] for _, p in collector.raw_observations()}
        )

    wait_until(lambda: counters() >= sent, 30, f"all {sent} readings upstream")


def journal_entries(data_dir: Path) -> list[tuple[int, bytes]]:
    """Everything a stopped agent's journal holds, read through the journal's own API."""

    async def read() -> list[tuple[int, bytes]]:
        async with Journal(data_dir / "journal.sqlite", sinks=["bridge"]) as j:
            return [(e.seq, e.envelope) for e in await j.read_after("bridge", 0, 10**9)]

    return asyncio.run(read())


@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_delivers_everything_and_reuses_no_sequence(
    tmp_path: Path,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    agent_process: Any,
) -> None:
    config, key = write_agent_dir(tmp_path / "gw", agent_config_dict(local_broker, upstream_broker))
    proc: AgentProcess = agent_process(config)
    proc.start()
    status = Collector(upstream_broker.port, f"edgence/{key.address}/status")
    pub = Publisher(device, rate=1000)
    pub.start()
    wait_until(lambda: len(collector.raw_observations()) > 300, 20, "stream flowing")
    proc.kill()  # SIGKILL: no shutdown code runs
    killed_at = len(collector.raw_observations())
    # The broker publishes the agent's last will: consumers learn the gateway went away.
    wait_until(lambda: b'"offline"' in status.messages[-1][1], 10, "last will")
    status.close()
    time.sleep(0.5)
    proc.start()
    time.sleep(0.5)
    sent = pub.stop()
    wait_for_all_readings(collector, sent)
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    obs = dedupe_by_sequence(collector.raw_observations())
    # Every reading the device sent was signed exactly once (no double-sign after the crash:
    # the broker redelivers unacknowledged frames and their counters are refused as replays).
    counters = [o["message"]["deviceCounter"] for o in obs]
    assert sorted(counters) == list(range(1, sent + 1))
    # Everything journaled reached upstream, byte for byte.
    upstream = {o["message"]["gatewaySequence"]: o for o in obs}
    journaled = journal_entries(tmp_path / "gw" / "data")
    assert len(journaled) == sent
    for seq, envelope in journaled:
        assert json.loads(envelope) == upstream[seq]
    assert killed_at < sent, "the kill happened mid-stream"
    assert all(o["gateway"] == key.address for o in obs)


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_loses_nothing_accepted(
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
    pub = Publisher(device, rate=1000)
    pub.start()
    wait_until(lambda: len(collector.raw_observations()) > 200, 20, "stream flowing")
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    log = proc.log_text()
    assert "event=stopped" in log
    proc.start()
    sent = pub.stop()
    wait_for_all_readings(collector, sent)
    obs = dedupe_by_sequence(collector.raw_observations())
    assert sorted(o["message"]["deviceCounter"] for o in obs) == list(range(1, sent + 1))


async def test_bridge_falls_back_to_the_journal_when_its_memory_queue_overflows(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    running = await start_agent(agent_config_dict(local_broker, upstream_broker))
    bridge = running.agent.bridge
    assert bridge is not None
    bridge.FAST_MAX = 20  # a small memory queue, to overflow it quickly
    await asyncio.to_thread(upstream_broker.stop)
    for n in range(1, 301):
        await asyncio.to_thread(
            device.publish, "devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]), False
        )
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("observations_signed") == 300, 15, "all journaled")
    assert not bridge._live  # overflowed: it will read the journal
    await asyncio.to_thread(upstream_broker.start)
    await async_wait_until(
        lambda: delivered(collector) == 300,
        30,
        "all 300",
    )
    obs = dedupe_by_sequence(collector.raw_observations())
    assert [o["message"]["deviceCounter"] for o in obs] == list(range(1, 301))
    # Caught up again: later readings take the in-memory path.
    device.publish("devices/dev-1/up", encode_frame(301, [("t", 301, 0, "Cel")]))
    await async_wait_until(lambda: bridge._live and bridge.watermark >= 301, 10, "live again")


async def backlog_of(n: int, running: Any, upstream: LocalMosquitto, device: Device) -> None:
    """Upstream down, `n` readings journaled: the bridge has a backlog to read back (none of
    it waits in the bridge's memory queue)."""
    running.agent.bridge.FAST_MAX = 0
    await asyncio.to_thread(upstream.stop)
    for k in range(1, n + 1):
        await asyncio.to_thread(
            device.publish, "devices/dev-1/up", encode_frame(k, [("t", k, 0, "Cel")]), False
        )
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("observations_signed") == n, 15, "all journaled")


async def test_catching_up_the_bridge_reads_the_backlog_when_the_intake_is_idle(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    running = await start_agent(agent_config_dict(local_broker, upstream_broker))
    bridge, pipeline = running.agent.bridge, running.agent.pipeline
    assert bridge is not None and bridge.intake_idle is pipeline.idle
    await backlog_of(200, running, upstream_broker, device)
    bridge.INTAKE_WAIT_MAX = 60.0  # no cap: the read waits for the intake alone
    pipeline.idle.clear()  # as while live readings are queued or being journaled
    await asyncio.to_thread(upstream_broker.start)
    await async_wait_until(bridge.conn.connected.is_set, 15, "upstream connected")
    await asyncio.sleep(0.5)
    assert bridge.watermark == 0 and collector.observations() == []
    pipeline.idle.set()
    await async_wait_until(lambda: delivered(collector) == 200, 15, "backlog delivered")
    obs = dedupe_by_sequence(collector.raw_observations())
    assert [o["message"]["deviceCounter"] for o in obs] == list(range(1, 201))


async def test_a_busy_intake_slows_the_catch_up_but_cannot_stop_it(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    cfg = agent_config_dict(local_broker, upstream_broker)
    cfg["bridge"]["batch"] = 16  # 13 reads, each after a wait of up to INTAKE_WAIT_MAX
    running = await start_agent(cfg)
    bridge, pipeline = running.agent.bridge, running.agent.pipeline
    assert bridge is not None
    await backlog_of(200, running, upstream_broker, device)
    pipeline.idle.clear()  # never idle: each read waits INTAKE_WAIT_MAX, then goes ahead
    await asyncio.to_thread(upstream_broker.start)
    await async_wait_until(lambda: delivered(collector) == 200, 30, "backlog delivered")
    assert not pipeline.idle.is_set()
    obs = dedupe_by_sequence(collector.raw_observations())
    assert [o["message"]["deviceCounter"] for o in obs] == list(range(1, 201))
