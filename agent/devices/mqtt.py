"""MQTT source: subscribes to device topics on the local broker and hands frames to the pipeline.

QoS 1 messages are acknowledged to the broker only after the pipeline has journaled them
(paho manual ack), so a crash between receipt and commit makes the broker deliver them again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import paho.mqtt.client as paho

from agent.component import Health
from agent.config import MqttSourceConfig
from agent.devices.codecs.frame import parse_frame
from agent.errors import FrameError
from agent.metrics import Metrics
from agent.model import NAME_RE, Transport
from agent.mqtt import MqttConnection
from agent.pipeline import Arrival, Pipeline


class MqttSource:
    name = "mqtt"

    def __init__(
        self,
        cfg: MqttSourceConfig,
        *,
        pipeline: Pipeline,
        metrics: Metrics,
        client_id: str,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.devices.mqtt")
        self.ready = asyncio.Event()
        self.conn = MqttConnection(
            cfg.broker,
            client_id=cfg.broker.client_id or client_id,
            clean_start=False,
            name="devices",
            manual_ack=cfg.qos == 1,
            logger=self.log,
        )
        self.conn.client.on_message = self._on_message
        self.conn.client.on_subscribe = self._on_subscribe
        self.conn.on_connected = self._on_connected
        # (filter levels, index of the '+' that names the device); no '#' (config forbids it)
        self._filters = [(t.split("/"), t.split("/").index("+")) for t in cfg.topics]
        self._resume: asyncio.Task[None] | None = None
        self._intake_paused = False  # pause_intake(): stays paused when the pipeline has room
        self._device_cache: dict[str, str | None] = {}
        self.received = 0
        metrics.gauge("frames_received_mqtt", lambda: float(self.received))

    def _on_connected(self, session_present: bool) -> None:
        # Re-subscribe on every connection: a broker that lost our session forgot them.
        self.conn.client.subscribe([(t, self.cfg.qos) for t in self.cfg.topics])
        if session_present:
            # Already subscribed in the kept session, and serving: the SUBACK may wait behind
            # a backlog that intake is paused on (a full journal), so readiness does not.
            self.ready.set()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, rcs: Any, props: Any
    ) -> None:
        self.ready.set()

    def _device_of(self, topic: str) -> str | None:
        try:
            return self._device_cache[topic]
        except KeyError:
            pass
        device = self._match_device(topic)
        if len(self._device_cache) < 100_000:  # bounded: topics come from outside
            self._device_cache[topic] = device
        return device

    def _match_device(self, topic: str) -> str | None:
        levels = topic.split("/")
        for filt, idx in self._filters:
            if len(levels) == len(filt) and all(
                f == "+" or f == lv for f, lv in zip(filt, levels, strict=True)
            ):
                return levels[idx]
        return None

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.received += 1
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos:
                client.ack(mid, qos)

        topic = msg.topic
        device = self._device_of(topic)
        if device is None or not NAME_RE.match(device):
            self.pipeline.reject(
                "mqtt", "?", "bad_topic", f"topic {topic[:80]!r} names no valid device id"
            )
            ack()
            return
        try:
            frame = parse_frame(
                bytes(msg.payload),
                max_bytes=self.cfg.max_payload,
                max_values=self.cfg.max_values_per_frame,
            )
        except FrameError as exc:
            self.pipeline.reject("mqtt", device, exc.reason, f"topic={topic} {exc.detail}")
            ack()
            return
        if frame.device_id is not None and frame.device_id != device:
            self.pipeline.reject(
                "mqtt",
                device,
                "device_mismatch",
                f"frame id {frame.device_id!r} published on {topic}",
            )
            ack()
            return
        arrival = Arrival(frame, device, Transport.MQTT, "mqtt", ack=ack)
        if not self.pipeline.offer(arrival) and self._resume is None:
            self.metrics.inc("source_paused", source="mqtt")
            self.conn.pause_reading()
            self._resume = asyncio.get_running_loop().create_task(self._resume_when_space())

    async def _resume_when_space(self) -> None:
        try:
            await self.pipeline.wait_for_space()
        finally:
            self._resume = None
            if not self._intake_paused:
                self.conn.resume_reading()

    async def run(self) -> None:
        await self.conn.run()

    async def stop(self, grace: float = 0.3) -> None:
        """Disconnect (after the pipeline drained: what it accepted was acknowledged)."""
        await self.conn.stop(grace=grace)

    def pause_intake(self) -> None:
        """Stop reading the socket: the broker keeps the rest for the persistent session."""
        self._intake_paused = True
        self.conn.pause_reading()

    def resume_intake(self) -> None:
        self._intake_paused = False
        self.conn.resume_reading()

    def health(self) -> Health:
        up = self.conn.connected.is_set()
        return Health(
            "up" if up else "down",
            {"connected": up, "url": self.cfg.broker.url, "frames": self.received},
        )
