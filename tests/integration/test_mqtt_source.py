"""The MQTT source against a real local Mosquitto: it re-subscribes after the broker lost its
session, and it applies backpressure (pauses reading) instead of buffering without bound."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until


@pytest.fixture
def forgetful_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A local broker without persistence: a restart forgets every session and subscription."""
    with LocalMosquitto(tmp_path / "forgetful", name="local", persistence=False) as b:
        yield b


def counters(collector: Collector) -> set[int]:
    return {o["message"]["deviceCounter"] for o in collector.observations()}


async def test_source_resubscribes_after_the_local_broker_restarts_without_its_session(
    forgetful_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
) -> None:
    running = await start_agent(agent_config_dict(forgetful_broker, upstream_broker))
    device = Device(forgetful_broker.port)
    try:
        device.publish("devices/dev-1/up", encode_frame(1, [("t", 1, 0, "Cel")]))
        await async_wait_until(lambda: counters(collector) == {1}, 10, "first reading")
        source = running.agent.mqtt
        assert source is not None
        await asyncio.to_thread(forgetful_broker.stop)
        await async_wait_until(lambda: not source.conn.connected.is_set(), 10, "disconnect seen")
        await asyncio.to_thread(forgetful_broker.start)
        await async_wait_until(source.conn.connected.is_set, 30, "source reconnected")
        await async_wait_until(device.client.is_connected, 30, "device reconnected")
        # The broker forgot the subscription; only a re-subscribe brings the next frame in.
        for n in range(2, 5):
            await asyncio.to_thread(
                device.publish, "devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")])
            )
        await async_wait_until(lambda: counters(collector) == {1, 2, 3, 4}, 15, "readings again")
    finally:
        device.close()


@pytest.mark.timeout(120)  # a flood through a paused source: 15-26 s on a busy machine
async def test_a_flood_beyond_the_queue_bound_pauses_the_source_and_loses_nothing(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    device: Device,
    start_agent: Any,
) -> None:
    cfg = agent_config_dict(
        local_broker, upstream_broker, pipeline={"queue_size": 16, "batch_max": 4}
    )
    running = await start_agent(cfg)
    n = 3000

    def flood() -> None:
        for i in range(1, n + 1):
            device.publish("devices/dev-2/up", encode_frame(i, [("t", i, 0, "Cel")]), wait=False)

    await asyncio.to_thread(flood)
    await async_wait_until(lambda: len(counters(collector)) == n, 60, f"all {n} readings")
    assert counters(collector) == set(range(1, n + 1))
    m = running.agent.metrics
    assert m.get("source_paused") > 0, "the flood never hit the queue bound"
    assert m.get("frames_rejected") == 0
