"""The firmware's BTHome advertisements received by the agent's BLE source: the firmware's own
loop (app.Node with its BleLink) advertises through a Bumble virtual controller, bleak scans it
on another, and the readings arrive signed upstream through the real pipeline and Mosquitto."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from edgence import config
from edgence.app import Node
from edgence.board import BleLink
from edgence.counter import BlockCounter
from edgence.outbox import Outbox
from edgence.sensors import SimulatedSensor

from agent.devices.codecs.bthome import mac_bytes
from agent.localbroker import LocalMosquitto

from .ble_bumble import BTHomeSensor, VirtualRadio
from .conftest import Collector, async_wait_until
from .test_ble_source import bindkey_file, ble_config, readings

BINDKEY = bytes.fromhex("8c1f3a5e7d9b2c4e6f8a0b1c2d3e4f50")
MAC = "C8:2B:96:11:22:33"


class BumbleBle:
    """Stands in for MicroPython's `bluetooth.BLE` on an ESP32 (no radio here): the raw
    advertising data the firmware hands to gap_advertise goes out on a Bumble virtual
    controller. `apply()` runs on the test's event loop after each firmware step."""

    def __init__(self, sensor: BTHomeSensor) -> None:
        self.sensor = sensor
        self.pending: bytes | None = None
        self.sent: list[bytes] = []

    def active(self, on: bool) -> None:
        pass

    def config(self, name: str) -> tuple[int, bytes]:
        assert name == "mac"
        return (0, mac_bytes(self.sensor.address))

    def gap_advertise(self, interval_us: int, adv_data: bytes) -> None:
        self.pending = adv_data

    async def apply(self) -> None:
        assert self.pending is not None
        device = self.sensor.device
        if device.is_advertising:
            await device.stop_advertising()
        await device.start_advertising(
            advertising_data=self.pending, advertising_interval_min=20, advertising_interval_max=20
        )
        self.sent.append(self.pending)
        self.pending = None


def has_readings(collector: Collector, count: int) -> bool:
    return len(readings(collector, "fw-ble")) >= count


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    r = VirtualRadio()
    await r.add_adapter("hci0", "F0:F0:F0:F0:F0:F0")
    yield r


@pytest.mark.parametrize("encrypted", [True, False], ids=["bindkey", "plain"])
async def test_firmware_bthome_adverts_arrive_signed_upstream(
    encrypted: bool,
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
    tmp_path: Path,
) -> None:
    device: dict[str, Any] = {"mac": MAC}
    if encrypted:
        device["bindkey_file"] = bindkey_file(tmp_path, BINDKEY)
    await start_agent(
        ble_config(local_broker, upstream_broker, {"fw-ble": device}), ble_backend=radio.backend()
    )
    sensor = BTHomeSensor(radio, MAC)
    await sensor.power_on()
    ble = BumbleBle(sensor)
    bundle = {
        "edgence": 1, "device_id": "fw-ble", "transport": "ble", "counter_start": 1,
        "key_kind": "bthome" if encrypted else "hmac",
        "key": BINDKEY.hex() if encrypted else "00" * 32, "ble": {"mac": MAC},
    }  # fmt: skip
    cfg = config.parse(json.dumps(bundle))
    sim = SimulatedSensor(seed=11)
    expected = [sim.read()[0][1] for _ in range(4)]
    node = Node(
        cfg,
        BleLink(cfg, ble=ble),
        [SimulatedSensor(seed=11)],
        BlockCounter(str(tmp_path), cfg.counter_start, 4),
        Outbox(None, 4),
        clock=lambda: None,
    )
    for i in range(1, 5):
        assert node.step()
        await ble.apply()
        await async_wait_until(partial(has_readings, collector, i), 15, f"reading {i}")
    got = readings(collector, "fw-ble")
    assert [(r.sensor, r.value, r.exponent, r.unit) for r in got] == [
        ("temperature", v, -2, "Cel") for v in expected
    ]
    counters = [r.counter for r in got]
    if encrypted:
        assert counters == [1, 2, 3, 4]  # the firmware's counter, authenticated by the MIC
    else:
        assert counters == sorted(set(counters))  # the agent numbers plain adverts itself
    assert {r.auth.value for r in got} == ({"bthome"} if encrypted else {"allowlist"})
