"""Frames that reach the agent out of order through a real local Mosquitto (issue 16 soak: after a
broker restart a paho device sends frames it queued during the outage after newer ones it
published while reconnecting) are signed once each; copies and counters below the replay window
are refused; the window is the same after the agent restarts on its journal."""

from __future__ import annotations

import asyncio
from typing import Any

from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto

from .conftest import Collector, Device, agent_config_dict, async_wait_until


def counters(collector: Collector) -> list[int]:
    return [int(o["message"]["deviceCounter"]) for o in collector.observations()]


async def test_frames_overtaken_after_a_broker_restart_are_signed_once_and_copies_are_not(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
) -> None:
    cfg = agent_config_dict(local_broker, upstream_broker, journal={"replay_window": 64})
    running = await start_agent(cfg, name="gw")
    key = running.agent.key
    device = Device(local_broker.port)

    def send(*ns: int) -> None:
        for n in ns:
            device.publish("devices/dev-1/up", encode_frame(n, [("t", n, 0, "Cel")]))

    try:
        await asyncio.to_thread(send, 1, 2, 3)
        await async_wait_until(lambda: counters(collector) == [1, 2, 3], 15, "frames 1-3")
        # The local broker restarts (it keeps the agent's session: persistence).
        await asyncio.to_thread(local_broker.stop)
        await asyncio.to_thread(local_broker.start)
        source = running.agent.mqtt
        assert source is not None
        await async_wait_until(source.conn.connected.is_set, 30, "the agent reconnected")
        await async_wait_until(device.client.is_connected, 30, "the device reconnected")
        # What the device's client then sends: a frame published while reconnecting first, the
        # frames queued during the outage after it, and a QoS 1 copy of one of them.
        # frames queued during the outage after it, and a QoS 1 copy of one of them. Frames of
        # one device reach the pipeline in order, so once the last one is upstream every frame
        # before it was decided.
        await asyncio.to_thread(send, 8, 4, 5, 6, 7, 6, 9)
        await async_wait_until(lambda: 9 in counters(collector), 15, "frame 9")
        # Far ahead, then one below the window (100 - 64 = 36 is the first it forgot).
        await asyncio.to_thread(send, 100, 36, 37, 7, 38)
        await async_wait_until(lambda: 38 in counters(collector), 15, "frame 38")
        await running.stop()
        # A new agent on the same journal: the window it kept, not just the last counter.
        await start_agent(cfg, key=key, name="gw")
        await asyncio.to_thread(send, 99, 37, 8, 100, 101)
        await async_wait_until(lambda: 101 in counters(collector), 15, "frame 101")
        got = counters(collector)
        assert len(got) == len(set(got)), "a counter was signed twice"
        assert set(got) == {*range(1, 10), 37, 38, 99, 100, 101}
    finally:
        device.close()
