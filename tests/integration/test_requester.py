"""MqttRequester against a real Mosquitto: each answer reaches the request it correlates with,
an answer under another Correlation Data is ignored, and an unanswered request ends in None.
The answering side is a plain paho MQTT 5 client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerEndpoint
from agent.localbroker import LocalMosquitto
from agent.requester import MqttRequester


@pytest.fixture
def answerer(local_broker: LocalMosquitto) -> Iterator[list[bytes]]:
    """Answers `req/echo` with the payload reversed (and once more under a forged Correlation
    Data first); never answers `req/silent`. Yields the payloads it saw."""
    seen: list[bytes] = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="answerer", protocol=paho.MQTTv5)

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        seen.append(bytes(msg.payload))
        if msg.topic != "req/echo":
            return
        reply = msg.properties.ResponseTopic  # type: ignore[union-attr]
        for corr, body in ((b"forged!!", b"not yours"), (msg.properties.CorrelationData, None)):  # type: ignore[union-attr]
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = corr
            client.publish(reply, body or bytes(reversed(msg.payload)), qos=1, properties=props)

    c.on_message = on_message
    c.connect("127.0.0.1", local_broker.port)
    c.subscribe("req/#", qos=1)
    c.loop_start()
    try:
        yield seen
    finally:
        c.loop_stop()
        c.disconnect()


async def test_answers_reach_their_own_request_and_silence_is_none(
    local_broker: LocalMosquitto, answerer: list[bytes]
) -> None:
    await asyncio.sleep(0.2)  # the answerer's subscription is in place
    r = MqttRequester(
        BrokerEndpoint("127.0.0.1", local_broker.port, protocol=5),
        client_id="asker",
        reply_filter="res/asker/#",
        name="test-requester",
    )
    assert await r.start(10)
    try:
        got = await asyncio.gather(
            r.request("req/echo", b"abc", "res/asker/1", 10),
            r.request("req/echo", b"xyz", "res/asker/2", 10),
        )
        assert list(got) == [b"cba", b"zyx"]
        assert await r.request("req/silent", b"hello", "res/asker/3", 0.5) is None
        assert sorted(answerer) == [b"abc", b"hello", b"xyz"]
    finally:
        await r.close()


async def test_start_gives_up_when_no_broker_answers() -> None:
    from agent.localbroker import free_port

    r = MqttRequester(
        BrokerEndpoint("127.0.0.1", free_port(), protocol=5),
        client_id="asker",
        reply_filter="res/asker/#",
        name="test-requester",
    )
    assert await r.start(0.5) is False
