"""Hostile and newer BTHome adverts through the real BLE source (bleak's API over Bumble virtual
controllers), the pipeline and the bridge (issue 16, finding 8): a binary-sensor byte other than
0 or 1 is refused, not read as "on" or as its lowest bit; the command object 0x3B and the
settings revision 0x65 are decoded and the objects after them are not lost."""

from __future__ import annotations

from typing import Any

from agent.devices.codecs.bthome import encode_bthome
from agent.localbroker import LocalMosquitto
from tests.integration.ble_bumble import BTHomeSensor, VirtualRadio
from tests.integration.conftest import Collector, async_wait_until
from tests.integration.test_ble_source import PLAIN_MAC, ble_config, radio, readings

__all__ = ["radio"]  # the fixture, found by name


async def test_a_binary_byte_other_than_0_or_1_is_refused_and_0x3b_0x65_are_decoded(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    running = await start_agent(
        ble_config(local_broker, upstream_broker, {"door-1": {"mac": PLAIN_MAC}}),
        ble_backend=radio.backend(),
    )
    sensor = BTHomeSensor(radio, PLAIN_MAC)
    await sensor.power_on()
    # packet 1: "door" = 0x02 (neither closed nor open in the spec; its lowest bit says closed)
    await sensor.advertise(encode_bthome([(0x00, 1), (0x01, 90), (0x1A, 2)]))
    await async_wait_until(
        lambda: (
            running.agent.metrics.get("frames_rejected", reason="bad_binary", source="ble") >= 1
        ),
        15,
        "the advert refused",
    )
    # packet 2: command "step up 5", settings revision 3, then the door, open
    await sensor.advertise(
        encode_bthome([(0x00, 2), (0x01, 91), (0x1A, 1), (0x3B, b"\x03\x05"), (0x65, 3)])
    )
    await async_wait_until(lambda: len(readings(collector, "door-1")) == 3, 15, "packet 2")
    got = {r.sensor: (r.decimal, r.unit) for r in readings(collector, "door-1")}
    assert got == {"battery": ("91", "%"), "door": ("1", "{bool}"), "command": ("3", "{command}")}
    assert running.agent.metrics.get("bthome_unknown_objects") == 0
