"""The BLE source through bleak's real API over Bumble virtual controllers (tests/integration/
ble_bumble.py), through the real pipeline, journal and bridge to a real upstream Mosquitto:
BTHome plain and encrypted, refusals (wrong key, replay, downgrade), GATT peripherals that
come and go, the scanner watchdog, and a missing BlueZ."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.attest.observation import verify_envelope
from agent.config import config_from_dict
from agent.devices.ble import BleSource
from agent.devices.bledevices import ConfiguredBleDevices
from agent.devices.codecs.bthome import encode_bthome, mac_bytes
from agent.devices.codecs.frame import encode_frame
from agent.localbroker import LocalMosquitto
from agent.metrics import Metrics
from agent.model import Reading

from .ble_bumble import FRAME_CHARACTERISTIC, BTHomeSensor, FramePeripheral, VirtualRadio
from .conftest import Collector, agent_config_dict, async_wait_until

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
ENC_MAC = "54:48:E6:8F:80:A5"
PLAIN_MAC = "A4:C1:38:8D:18:B2"
GATT_MAC = "11:22:33:44:55:66"


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    r = VirtualRadio()
    await r.add_adapter("hci0", "F0:F0:F0:F0:F0:F0")
    yield r


def bindkey_file(tmp_path: Path, key: bytes = KEY) -> str:
    path = tmp_path / f"bindkey-{key.hex()[:6]}"
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return str(path)


def ble_config(
    local: LocalMosquitto, upstream: LocalMosquitto, devices: dict[str, Any], **ble: Any
) -> dict[str, Any]:
    section = {"enabled": True, "adapter": "hci0", "devices": devices, **ble}
    return agent_config_dict(local, upstream, sources={"mqtt": {"url": local.url}, "ble": section})


def readings(collector: Collector, device: str) -> list[Reading]:
    out = []
    for _topic, payload in collector.raw_observations():
        r = verify_envelope(payload).reading
        if r.device_id == device:
            out.append(r)
    return out


async def test_plain_and_encrypted_bthome_values_arrive_signed_upstream(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
    tmp_path: Path,
) -> None:
    devices = {
        "ht-enc": {"mac": ENC_MAC, "bindkey_file": bindkey_file(tmp_path)},
        "ht-plain": {"mac": PLAIN_MAC},
    }
    running = await start_agent(
        ble_config(local_broker, upstream_broker, devices), ble_backend=radio.backend()
    )
    enc, plain = BTHomeSensor(radio, ENC_MAC), BTHomeSensor(radio, PLAIN_MAC)
    await enc.power_on()
    await plain.power_on()
    await enc.advertise(
        encode_bthome(
            [(0x02, -525), (0x03, 4550)], mac=mac_bytes(ENC_MAC), bindkey=KEY, counter=1000
        )
    )
    await plain.advertise(encode_bthome([(0x00, 1), (0x01, 93), (0x3A, 0x01)]))
    await async_wait_until(
        lambda: (
            len(readings(collector, "ht-enc")) == 2 and len(readings(collector, "ht-plain")) == 2
        ),
        15,
        "both sensors upstream",
    )
    by_sensor = {r.sensor: r for r in readings(collector, "ht-enc")}
    assert by_sensor["temperature"].decimal == "-5.25"
    assert by_sensor["temperature"].unit == "Cel"
    assert by_sensor["humidity"].decimal == "45.50"
    assert {r.counter for r in by_sensor.values()} == {1000}
    assert {r.auth for r in by_sensor.values()} == {"bthome"}
    plain_values = {r.sensor: (r.decimal, r.unit, r.auth) for r in readings(collector, "ht-plain")}
    assert plain_values == {
        "battery": ("93", "%", "allowlist"),
        "button": ("1", "{event}", "allowlist"),
    }

    # The sensors keep repeating the same adverts: one packet id, one counter -> signed once.
    metrics = running.agent.metrics
    await async_wait_until(lambda: metrics.get("ble_duplicates") > 10, 10, "repeats heard")
    await plain.advertise(encode_bthome([(0x00, 2), (0x01, 92)]))
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 3, 10, "next packet")
    counters = [r.counter for r in readings(collector, "ht-plain")]
    assert counters[0] == counters[1] < counters[2]  # gateway-assigned, growing
    assert len(readings(collector, "ht-enc")) == 2
    assert metrics.get("frames_rejected") == 0


async def test_wrong_bindkey_is_refused_and_nothing_is_signed(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
    tmp_path: Path,
) -> None:
    devices = {"ht-enc": {"mac": ENC_MAC, "bindkey_file": bindkey_file(tmp_path)}}
    running = await start_agent(
        ble_config(local_broker, upstream_broker, devices), ble_backend=radio.backend()
    )
    sensor = BTHomeSensor(radio, ENC_MAC)
    await sensor.power_on()
    other_key = bytes(range(16))
    await sensor.advertise(
        encode_bthome([(0x02, 100)], mac=mac_bytes(ENC_MAC), bindkey=other_key, counter=7)
    )
    m = running.agent.metrics
    await async_wait_until(
        lambda: m.get("frames_rejected", reason="bad_mic", source="ble") > 0, 10, "bad MIC seen"
    )
    # The right key afterwards goes through; the forged advert never did.
    await sensor.advertise(
        encode_bthome([(0x02, 200)], mac=mac_bytes(ENC_MAC), bindkey=KEY, counter=8)
    )
    await async_wait_until(lambda: len(readings(collector, "ht-enc")) == 1, 10, "valid advert")
    assert [(r.value, r.counter) for r in readings(collector, "ht-enc")] == [(200, 8)]


async def test_replayed_and_downgraded_adverts_are_refused_also_after_a_restart(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
    tmp_path: Path,
) -> None:
    cfg = ble_config(
        local_broker,
        upstream_broker,
        {"ht-enc": {"mac": ENC_MAC, "bindkey_file": bindkey_file(tmp_path)}},
    )
    running = await start_agent(cfg, ble_backend=radio.backend())
    sensor = BTHomeSensor(radio, ENC_MAC)
    await sensor.power_on()

    def advert(counter: int, value: int) -> bytes:
        return encode_bthome([(0x02, value)], mac=mac_bytes(ENC_MAC), bindkey=KEY, counter=counter)

    old = advert(5, 111)  # captured by an attacker
    await sensor.advertise(old)
    await async_wait_until(lambda: len(readings(collector, "ht-enc")) == 1, 10, "counter 5")
    await sensor.advertise(advert(6, 222))
    await async_wait_until(lambda: len(readings(collector, "ht-enc")) == 2, 10, "counter 6")
    m = running.agent.metrics
    await sensor.advertise(old)
    await async_wait_until(
        lambda: m.get("frames_rejected", reason="replay", source="ble") > 0, 10, "replay"
    )
    await sensor.advertise(encode_bthome([(0x02, 333)]))  # plaintext from a keyed device
    await async_wait_until(
        lambda: m.get("frames_rejected", reason="downgrade", source="ble") > 0, 10, "downgrade"
    )
    await running.stop()

    # A restarted gateway remembers counter 6 (journal) and still refuses the old advert.
    running = await start_agent(cfg, key=running.agent.key, ble_backend=radio.backend())
    m = running.agent.metrics
    await sensor.advertise(old)
    await async_wait_until(
        lambda: m.get("frames_rejected", reason="replay", source="ble") > 0, 10, "replay"
    )
    await sensor.advertise(advert(7, 444))
    await async_wait_until(lambda: len(readings(collector, "ht-enc")) == 3, 10, "counter 7")
    assert [(r.value, r.counter) for r in readings(collector, "ht-enc")] == [
        (111, 5),
        (222, 6),
        (444, 7),
    ]


async def test_gatt_peripheral_frames_arrive_and_it_is_reconnected_after_it_came_back(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    devices = {"gatt-1": {"mac": GATT_MAC, "mode": "gatt", "characteristic": FRAME_CHARACTERISTIC}}
    cfg = ble_config(
        local_broker,
        upstream_broker,
        devices,
        connect_timeout="0.5s",
        connect_attempts=2,
        reconnect_max="1s",
    )
    peripheral = FramePeripheral(radio, GATT_MAC)
    await peripheral.appear()
    running = await start_agent(cfg, ble_backend=radio.backend())
    await async_wait_until(peripheral.subscribed.is_set, 15, "agent subscribed")
    frame = encode_frame(1, [("temperature", 2137, -2, "Cel"), ("humidity", 455, -1, "%")])
    assert len(frame) > 40  # several notifications at the default MTU
    await peripheral.send(frame)
    await async_wait_until(lambda: len(readings(collector, "gatt-1")) == 2, 10, "frame 1")

    await peripheral.disappear()
    source = running.agent.ble
    assert source is not None
    await async_wait_until(lambda: "gatt-1" not in source.connected, 10, "disconnect seen")
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("gatt_connect_failures") >= 2, 20, "failed retries")
    await peripheral.appear()
    await async_wait_until(peripheral.subscribed.is_set, 20, "agent resubscribed")
    await peripheral.send(encode_frame(2, [("temperature", 2140, -2, "Cel")]))
    await async_wait_until(lambda: len(readings(collector, "gatt-1")) == 3, 10, "frame 2")
    assert sorted((r.sensor, r.decimal, r.counter) for r in readings(collector, "gatt-1")) == [
        ("humidity", "45.5", 1),
        ("temperature", "21.37", 1),
        ("temperature", "21.40", 2),
    ]
    assert m.get("gatt_connects") >= 2


async def test_a_silent_scanner_is_restarted_by_the_watchdog(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    cfg = ble_config(
        local_broker, upstream_broker, {"ht-plain": {"mac": PLAIN_MAC}}, watchdog="0.3s"
    )
    running = await start_agent(cfg, ble_backend=radio.backend())
    sensor = BTHomeSensor(radio, PLAIN_MAC)
    await sensor.power_on()
    await sensor.advertise(encode_bthome([(0x00, 1), (0x02, 100)]))
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 1, 10, "first")
    m = running.agent.metrics
    assert m.get("ble_scanner_restarts") == 0  # adverts keep arriving: no restart
    starts = radio.scanner_starts
    radio.wedge_scanners()  # the adapter stops reporting, without any error
    await sensor.advertise(encode_bthome([(0x00, 2), (0x02, 200)]))
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 2, 15, "after restart")
    assert m.get("ble_scanner_restarts") >= 1
    assert radio.scanner_starts > starts


async def test_missing_bluez_gives_one_clear_error_and_the_agent_keeps_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The platform's own backend (BlueZ over D-Bus), with the system bus pointed nowhere."""
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-such-socket")
    cfg = config_from_dict(
        {
            "gateway": {"key_file": "k"},
            "sources": {"ble": {"enabled": True, "devices": {"s": {"mac": PLAIN_MAC}}}},
        },
        str(tmp_path / "agent.toml"),
        tmp_path,
    )

    class NoPipeline:
        def last_counter(self, device_id: str) -> None:
            return None

    metrics = Metrics()
    source = BleSource(
        cfg.sources.ble,
        pipeline=NoPipeline(),  # type: ignore[arg-type]
        metrics=metrics,
        directory=ConfiguredBleDevices(cfg.sources.ble.devices),
    )
    caplog.set_level(logging.ERROR, logger="agent.devices.ble")
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.ready.wait(), 10)
        assert metrics.get("ble_unavailable") == 1
        assert not task.done()  # keeps retrying with backoff instead of failing the agent
        lines = [r.getMessage() for r in caplog.records if "ble_unavailable" in r.getMessage()]
        assert len(lines) == 1
        assert "apt-get install bluez dbus" in lines[0]
    finally:
        await source.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_plaintext_without_packet_id_is_taken_once_per_change_with_growing_counters(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    cfg = ble_config(local_broker, upstream_broker, {"ht-plain": {"mac": PLAIN_MAC}})
    running = await start_agent(cfg, ble_backend=radio.backend())
    sensor = BTHomeSensor(radio, PLAIN_MAC)
    await sensor.power_on()
    same = encode_bthome([(0x02, 2000)])
    await sensor.advertise(same)
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 1, 10, "first")
    m = running.agent.metrics
    await async_wait_until(lambda: m.get("ble_duplicates") > 10, 10, "repeats heard")
    await sensor.advertise(encode_bthome([(0x02, 2001)]))
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 2, 10, "change")
    await running.stop()

    # After a restart the same payload is new to the source; its counter still grows.
    running = await start_agent(cfg, key=running.agent.key, ble_backend=radio.backend())
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 3, 10, "after restart")
    got = readings(collector, "ht-plain")
    assert [r.value for r in got] == [2000, 2001, 2001]
    assert got[0].counter < got[1].counter < got[2].counter
    assert running.agent.metrics.get("frames_rejected") == 0


async def test_gatt_connections_are_capped_and_a_freed_slot_goes_to_the_next_device(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    macs = {"gatt-a": "11:22:33:44:55:01", "gatt-b": "11:22:33:44:55:02"}
    devices = {
        d: {"mac": mac, "mode": "gatt", "characteristic": FRAME_CHARACTERISTIC}
        for d, mac in macs.items()
    }
    cfg = ble_config(
        local_broker, upstream_broker, devices, max_connections=1, connect_timeout="0.5s"
    )
    peripherals = {d: FramePeripheral(radio, mac) for d, mac in macs.items()}
    for p in peripherals.values():
        await p.appear()
    running = await start_agent(cfg, ble_backend=radio.backend())
    source = running.agent.ble
    assert source is not None
    await async_wait_until(lambda: len(source.connected) == 1, 15, "one connection")
    first = next(iter(source.connected))
    second = next(d for d in macs if d != first)
    await async_wait_until(peripherals[first].subscribed.is_set, 10, "first subscribed")
    assert not peripherals[second].subscribed.is_set()  # its slot is taken
    await peripherals[first].disappear()
    await async_wait_until(peripherals[second].subscribed.is_set, 20, "second subscribed")
    assert source.connected == {second}
    await peripherals[second].send(encode_frame(1, [("temperature", 1, 0, "Cel")]))
    await async_wait_until(lambda: len(readings(collector, second)) == 1, 10, "frame")


async def test_scanning_is_passive_where_supported_and_falls_back_to_active(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    cfg = ble_config(local_broker, upstream_broker, {"ht-plain": {"mac": PLAIN_MAC}})
    running = await start_agent(cfg, ble_backend=radio.backend(), name="passive")
    source = running.agent.ble
    assert source is not None and source.scanning_mode == "passive"
    await running.stop()

    radio.passive_supported = False
    running = await start_agent(cfg, ble_backend=radio.backend(), name="active")
    source = running.agent.ble
    assert source is not None and source.scanning_mode == "active"
    sensor = BTHomeSensor(radio, PLAIN_MAC)
    await sensor.power_on()
    await sensor.advertise(encode_bthome([(0x00, 1), (0x02, 100)]))
    await async_wait_until(lambda: len(readings(collector, "ht-plain")) == 1, 10, "reading")


async def test_a_ble_sensor_enrolled_with_pair_is_heard_and_activated(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    collector: Collector,
    start_agent: Any,
    radio: VirtualRadio,
    tmp_path: Path,
) -> None:
    """No [sources.ble.devices] entry: the device comes from the enrollment registry (as
    `edgence-agent pair --transport ble --address MAC --bindkey HEX` records it), pending until
    its first advert decrypts with the bindkey, then active."""
    from agent.devices.registry import DeviceRegistry, DeviceStatus, KeyKind
    from agent.model import Transport

    registry = DeviceRegistry(tmp_path / "agent" / "data" / "devices")
    registry.enroll(
        "ht-paired",
        transport=Transport.BLE,
        address=ENC_MAC,
        key=KEY,
        key_kind=KeyKind.BTHOME,
        window_s=120,
    )
    running = await start_agent(
        ble_config(local_broker, upstream_broker, {}), ble_backend=radio.backend()
    )
    sensor = BTHomeSensor(radio, ENC_MAC)
    await sensor.power_on()
    # A plaintext advert from the enrolled MAC is a downgrade: refused, not activated.
    await sensor.advertise(encode_bthome([(0x02, 100)]))
    await async_wait_until(
        lambda: running.agent.metrics.get("frames_rejected") > 0, 10, "plaintext refused"
    )
    await sensor.advertise(
        encode_bthome([(0x02, 2150)], mac=mac_bytes(ENC_MAC), bindkey=KEY, counter=7)
    )
    await async_wait_until(lambda: len(readings(collector, "ht-paired")) == 1, 15, "upstream")
    (r,) = readings(collector, "ht-paired")
    assert (r.decimal, r.auth, r.counter) == ("21.50", "bthome", 7)
    await running.agent.gate.flush_activations()
    assert registry.get("ht-paired").status is DeviceStatus.ACTIVE  # type: ignore[union-attr]
