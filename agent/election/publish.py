"""Where an agent publishes its decided rounds: retained QoS 1 messages on the upstream broker
(`<prefix>/election/<round>`), through the bridge's link or the election's own."""

from __future__ import annotations

import asyncio
from typing import Protocol

import paho.mqtt.client as paho

from agent.component import Health
from agent.mqtt import MqttConnection


class ResultPublisher(Protocol):
    def publish(self, topic: str, payload: bytes) -> bool: ...

    def is_connected(self) -> bool: ...


class ConnectionPublisher:
    """Retained QoS 1 publishes on an MqttConnection: the bridge's upstream link, or the
    election's own (then `run()` keeps it connected)."""

    name = "election-mqtt"

    def __init__(self, conn: MqttConnection, *, own: bool) -> None:
        self.conn = conn
        self.own = own
        self.ready = asyncio.Event()

    def is_connected(self) -> bool:
        return self.conn.connected.is_set()

    def publish(self, topic: str, payload: bytes) -> bool:
        if not self.conn.connected.is_set():
            return False
        info = self.conn.client.publish(topic, payload, qos=1, retain=True)
        return info.rc == paho.MQTT_ERR_SUCCESS

    async def run(self) -> None:
        self.ready.set()
        if self.own:
            await self.conn.run()

    async def stop(self, grace: float = 1.0) -> None:
        if self.own:
            await self.conn.stop(grace)

    def health(self) -> Health:
        up = self.conn.connected.is_set()
        return Health("up" if up else "down", {"url": self.conn.endpoint.url, "own": self.own})
