"""What the downlink tests share: a device whose command handling is the firmware's own
(edgence.downlink) behind a real MQTT 5 login, and the agent's command service built
in-process as wiring builds it (a Downlink on real Mosquitto, with its sqlite store)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
from edgence.downlink import Downlink as FirmwareDownlink
from paho.mqtt.enums import CallbackAPIVersion

from agent.attest.keys import GatewayKey
from agent.config import BrokerEndpoint, DownlinkConfig
from agent.config.downlink import CommandRule
from agent.devices.registry import DeviceRegistry
from agent.downlink.service import Downlink
from agent.downlink.store import CommandStore
from agent.metrics import Metrics
from agent.model import Eip712Domain, Transport

KEY = bytes(range(32))
GATEWAY_KEY = GatewayKey.from_bytes(b"\x07" * 32)
DOMAIN = Eip712Domain("Edgence", "1", 31337, "0x" + "00" * 20)


class MqttBoard:
    """The firmware's command handler behind a paho client on `devices/<id>/down`; `ran` is
    what its handlers executed."""

    def __init__(self, port: int, device: str, flash: Path, key: bytes = KEY) -> None:
        self.device = device
        self.ran: list[dict[str, Any]] = []
        flash.mkdir(parents=True, exist_ok=True)
        self.dl = FirmwareDownlink(
            SimpleNamespace(key=key, device_id=device), {"open": self._open}, str(flash)
        )
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv5)
        ready = threading.Event()
        c.on_subscribe = lambda *a: ready.set()
        c.on_connect = lambda cl, *a: cl.subscribe(f"devices/{device}/down", 1)
        c.on_message = self._on_message
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        assert ready.wait(10)
        self.c = c

    def _open(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ran.append(dict(args))
        return {"opened": 1}

    def _on_message(self, c: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            answer = self.dl.handle(bytes(msg.payload))
        if answer is not None:
            c.publish(f"devices/{self.device}/ack", answer, qos=1)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def command_service(
    tmp: Path,
    broker_port: int,
    devices: list[tuple[str, Transport]],
    policy: tuple[CommandRule, ...],
    **cfg: Any,
) -> tuple[Downlink, Metrics, DeviceRegistry]:
    """A Downlink for `devices` (enrolled active with KEY) under `policy`."""
    registry = DeviceRegistry(tmp / "devices")
    registry.enroll_active([(d, t, KEY) for d, t in devices if registry.get(d) is None])
    metrics = Metrics()
    dl = Downlink(
        DownlinkConfig(
            enabled=True,
            mqtt=BrokerEndpoint("127.0.0.1", broker_port, protocol=5),
            policy=policy,
            **cfg,
        ),
        store=CommandStore(tmp / "downlink.sqlite"),
        devices=registry.snapshot(),
        key=GATEWAY_KEY,
        domain=DOMAIN,
        metrics=metrics,
        client_id=f"edgence-test-downlink-{tmp.name}"[:64],
    )
    return dl, metrics, registry


async def run_parts(*parts: Any) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(p.run()) for p in parts]
    for p in parts:
        await asyncio.wait_for(p.ready.wait(), 20)
    return tasks


async def stop_parts(tasks: list[asyncio.Task[None]], *parts: Any) -> None:
    for p in reversed(parts):
        await p.stop(0.3)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
