"""The asking side of MQTT 5 request/response, the counterpart of `responder.py`: one
connection subscribed to the asker's reply topics, each request published with a Response
Topic and Correlation Data, and each answer handed to the request it correlates with (used by
`edgence-agent devices command` / `firmware update` through the command client, and by the
proof-of-service prober)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import BrokerEndpoint
from agent.mqtt import MqttConnection


class MqttRequester:
    """`await r.start(wait_s)`, then `await r.request(topic, payload, reply_topic, wait_s)`
    (the answer's bytes, or None when none came in time), then `await r.close()`."""

    def __init__(
        self, endpoint: BrokerEndpoint, *, client_id: str, reply_filter: str, name: str
    ) -> None:
        self.reply_filter = reply_filter
        self.conn = MqttConnection(
            endpoint, client_id=client_id, clean_start=True, name=name, nodelay=True
        )
        self._pending: dict[bytes, asyncio.Future[bytes]] = {}
        self._subscribed = asyncio.Event()
        self.conn.client.on_message = self._on_message
        self.conn.client.on_subscribe = lambda *a: self._subscribed.set()
        self.conn.on_connected = self._subscribe
        self._task: asyncio.Task[None] | None = None

    def _subscribe(self, session_present: bool) -> None:
        self.conn.client.subscribe(self.reply_filter, 1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        corr = getattr(getattr(msg, "properties", None), "CorrelationData", None)
        fut = self._pending.pop(bytes(corr), None) if corr is not None else None
        if fut is not None and not fut.done():
            fut.set_result(bytes(msg.payload))

    async def start(self, wait_s: float) -> bool:
        """Connect and subscribe; False (connection closed again) when that took too long."""
        self._task = asyncio.create_task(self.conn.run())
        try:
            await asyncio.wait_for(self._subscribed.wait(), wait_s)
        except TimeoutError:
            await self.close()
            return False
        return True

    async def close(self) -> None:
        await self.conn.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def request(
        self, topic: str, payload: bytes, reply_topic: str, wait_s: float
    ) -> bytes | None:
        """Publish one request (QoS 1); its answer, or None after `wait_s` seconds."""
        corr = secrets.token_bytes(8)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = corr
        self.conn.client.publish(topic, payload, qos=1, properties=props)
        try:
            return await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            return None
        finally:
            self._pending.pop(corr, None)


__all__ = ["MqttRequester"]
