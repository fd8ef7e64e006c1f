"""MqttConnection's paho client against a real Mosquitto: messages reach `on_message` without
paho's per-topic matching, and per-topic callbacks still work once one is registered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import BrokerEndpoint
from agent.localbroker import LocalMosquitto
from agent.mqtt import BufferedClient, MqttConnection


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path / "mosq", name="local") as b:
        yield b


async def receive(broker: LocalMosquitto, filtered: bool) -> tuple[list[str], list[str]]:
    """Publish on a/1 and b/1; (topics on_message got, topics the a/# callback got, if one is
    registered)."""
    conn = MqttConnection(
        BrokerEndpoint(host="127.0.0.1", port=broker.port), clean_start=True, name="t"
    )
    general: list[str] = []
    special: list[str] = []
    subscribed = asyncio.Event()

    def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        general.append(msg.topic)

    conn.client.on_message = on_message
    conn.client.on_subscribe = lambda *a: subscribed.set()
    if filtered:
        conn.client.message_callback_add("a/#", lambda c, u, m: special.append(m.topic))

    def on_connected(session_present: bool) -> None:
        conn.client.subscribe("#", 1)

    conn.on_connected = on_connected
    task = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        pub = paho.Client(CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for topic in ("a/1", "b/1"):
            pub.publish(topic, b"x", qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        for _ in range(250):
            if len(general) + len(special) >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await conn.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return general, special


async def test_messages_reach_on_message_without_per_topic_callbacks(
    broker: LocalMosquitto,
) -> None:
    assert await receive(broker, filtered=False) == (["a/1", "b/1"], [])


async def test_a_per_topic_callback_takes_its_topics_and_on_message_the_rest(
    broker: LocalMosquitto,
) -> None:
    assert await receive(broker, filtered=True) == (["b/1"], ["a/1"])


@pytest.mark.parametrize("protocol", [4, 5])
async def test_qos1_publishes_are_confirmed_by_their_pubacks(
    broker: LocalMosquitto, protocol: int
) -> None:
    # MQTT 3.1.1 PUBACKs take the client's short path (one shared success reason code), MQTT 5
    # ones paho's own decoding (they may carry a reason code and properties).
    conn = MqttConnection(
        BrokerEndpoint(host="127.0.0.1", port=broker.port, protocol=protocol),  # type: ignore[arg-type]
        clean_start=True,
        name="t",
    )
    acked: list[tuple[int, bool, object]] = []
    conn.client.on_publish = lambda c, u, mid, rc, props: acked.append((mid, rc.is_failure, rc))
    task = asyncio.create_task(conn.run())
    try:
        await asyncio.wait_for(conn.connected.wait(), 10)
        infos = [conn.client.publish(f"t/{k}", b"x", qos=1) for k in range(5)]
        for _ in range(250):
            if len(acked) == 5:
                break
            await asyncio.sleep(0.02)
        assert sorted(mid for mid, _, _ in acked) == sorted(i.mid for i in infos)
        assert not any(failed for _, failed, _ in acked)
        assert all(i.is_published() for i in infos)
        shared = BufferedClient._PUBACK_OK[0]
        assert all((rc is shared) == (protocol == 4) for _, _, rc in acked)
    finally:
        await conn.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_publishes_queued_beyond_the_inflight_window_go_out_as_pubacks_free_it(
    broker: LocalMosquitto,
) -> None:
    # 12 QoS 1 messages through a window of 2: paho queues 10, and each PUBACK sends the next.
    conn = MqttConnection(
        BrokerEndpoint(host="127.0.0.1", port=broker.port),
        clean_start=True,
        name="t",
        max_inflight=2,
    )
    got: list[str] = []
    sub = paho.Client(CallbackAPIVersion.VERSION2)
    subscribed = threading.Event()
    sub.on_message = lambda c, u, m: got.append(m.topic)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("q/#", 1)
    sub.loop_start()
    task = asyncio.create_task(conn.run())
    try:
        assert subscribed.wait(10)
        await asyncio.wait_for(conn.connected.wait(), 10)
        infos = [conn.client.publish(f"q/{k}", b"x", qos=1) for k in range(12)]
        for _ in range(250):
            if len(got) == 12 and all(i.is_published() for i in infos):
                break
            await asyncio.sleep(0.02)
        assert got == [f"q/{k}" for k in range(12)]
        assert all(i.is_published() for i in infos)
    finally:
        sub.loop_stop()
        sub.disconnect()
        await conn.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
