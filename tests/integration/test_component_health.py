"""Every configured source reports its own state in the health document and /metrics, built
from its `health()` (agent/component.py), not from telemetry knowing it by name: a serial port
open and closed, CoAP resources observed and not, a BLE scanner scanning and not, a Modbus
device answering and one unreachable."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import config_from_dict
from agent.devices.ble import BleSource
from agent.devices.bledevices import ConfiguredBleDevices
from agent.localbroker import LocalMosquitto
from agent.metrics import Metrics
from tests.support.modbus_peers import simple_device, start_tcp_server, stop_server

from .ble_bumble import VirtualRadio
from .conftest import Collector, async_wait_until
from .test_ble_source import PLAIN_MAC, ble_config
from .test_coap_source import DeviceServer, coap_config, free_udp_port
from .test_modbus_source import modbus_config
from .test_serial_source import PtyDevice, serial_config
from .test_telemetry import _get, scrape


@pytest.fixture
async def radio() -> AsyncIterator[VirtualRadio]:
    r = VirtualRadio()
    await r.add_adapter("hci0", "F0:F0:F0:F0:F0:F0")
    yield r


async def health_doc(port: int) -> dict[str, Any]:
    status, _ctype, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health")
    assert status == 200
    doc: dict[str, Any] = json.loads(body)
    return doc


async def metrics_port(running: Any) -> int:
    telemetry = running.agent.telemetry
    await async_wait_until(lambda: telemetry.port is not None, 10, "metrics endpoint listening")
    return int(telemetry.port)


def part_up(samples: dict[Any, float], component: str, part: str) -> float | None:
    key = ("edgence_component_part_up", (("component", component), ("part", part)))
    return samples.get(key)


def state_of(samples: dict[Any, float], component: str) -> str:
    states = [
        dict(labels)["state"]
        for (name, labels), v in samples.items()
        if name == "edgence_component_state" and dict(labels)["component"] == component and v
    ]
    assert len(states) == 1, states
    return str(states[0])


async def test_serial_ports_open_and_closed_show_in_health_and_metrics(
    upstream_broker: LocalMosquitto, start_agent: Any, tmp_path: Path
) -> None:
    dev = PtyDevice(tmp_path / "ttyUSB-sensor")
    missing = tmp_path / "ttyUSB-unplugged"
    cfg = serial_config(upstream_broker, dev.link)
    cfg["sources"]["serial"]["ports"].append({"path": str(missing), "device": "ser-2"})
    cfg["metrics"] = {"listen": "127.0.0.1:0"}
    running = await start_agent(cfg)
    port = await metrics_port(running)
    serial = running.agent.serial
    try:
        await async_wait_until(lambda: serial.ports[str(dev.link)].open, 10, "port opened")
        doc = await health_doc(port)
        s = doc["sources"]["serial"]
        assert s["state"] == "degraded" and s["ports_open"] == 1
        assert s["parts"][str(dev.link)]["state"] == "up"
        assert s["parts"][str(missing)] == {"state": "down", "device": "ser-2"}
        samples = await scrape(port)
        assert part_up(samples, "serial", str(dev.link)) == 1
        assert part_up(samples, "serial", str(missing)) == 0
        assert state_of(samples, "serial") == "degraded"

        dev.unplug()  # the agent's reads fail as on a USB unplug
        await async_wait_until(lambda: not serial.ports[str(dev.link)].open, 10, "port closed")
        doc = await health_doc(port)
        assert doc["sources"]["serial"]["state"] == "down"
        assert doc["sources"]["serial"]["parts"][str(dev.link)]["state"] == "down"
        assert state_of(await scrape(port), "serial") == "down"
    finally:
        dev.close()


async def test_observed_and_unreachable_coap_resources_show_per_device(
    upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    device = DeviceServer(free_udp_port())
    await device.start()
    dead = f"coap://127.0.0.1:{free_udp_port()}/sensor"
    observe = [
        {"device": "dead-1", "uri": dead, "timeout": "1s"},
        {"device": "obs-1", "uri": f"coap://127.0.0.1:{device.port}/sensor"},
    ]
    cfg = coap_config(upstream_broker, free_udp_port(), observe=observe, backoff_max="2s")
    cfg["metrics"] = {"listen": "127.0.0.1:0"}
    running = await start_agent(cfg)
    port = await metrics_port(running)
    m = running.agent.metrics
    try:
        await async_wait_until(
            lambda: m.get("coap_observe_registered", device="obs-1") >= 1, 10, "registered"
        )
        c = (await health_doc(port))["sources"]["coap"]
        assert c["state"] == "degraded" and c["listening"] is True and c["observing"] == 1
        assert c["parts"]["obs-1"]["state"] == "up"
        assert c["parts"]["dead-1"] == {"state": "down", "uri": dead}
        samples = await scrape(port)
        assert part_up(samples, "coap", "obs-1") == 1
        assert part_up(samples, "coap", "dead-1") == 0
    finally:
        await device.stop()


async def test_ble_scanning_shows_in_health_and_metrics(
    local_broker: LocalMosquitto,
    upstream_broker: LocalMosquitto,
    start_agent: Any,
    radio: VirtualRadio,
) -> None:
    cfg = ble_config(local_broker, upstream_broker, {"ht-plain": {"mac": PLAIN_MAC}})
    running = await start_agent(cfg, ble_backend=radio.backend())
    port = await metrics_port(running)
    await async_wait_until(lambda: running.agent.ble.scanning.is_set(), 10, "scanning")
    doc = await health_doc(port)
    b = doc["sources"]["ble"]
    assert b["state"] == "up" and b["scanning"] is True and b["scanning_mode"] == "passive"
    assert doc["sources"]["mqtt"]["state"] == "up"  # the other source keeps its own report
    assert state_of(await scrape(port), "ble") == "up"


async def test_a_ble_source_without_a_controller_reports_down_not_scanning(
    monkeypatch: Any, tmp_path: Path
) -> None:
    """BlueZ over D-Bus with the system bus pointed nowhere: no controller to scan with."""
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

    source = BleSource(
        cfg.sources.ble,
        pipeline=NoPipeline(),  # type: ignore[arg-type]
        metrics=Metrics(),
        directory=ConfiguredBleDevices(cfg.sources.ble.devices),
    )
    task = asyncio.create_task(source.run())
    try:
        await asyncio.wait_for(source.ready.wait(), 10)
        h = source.health()
        assert h.state == "down" and h.detail["scanning"] is False
    finally:
        await source.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_modbus_devices_answering_and_unreachable_show_per_device(
    upstream_broker: LocalMosquitto, start_agent: Any
) -> None:
    server, port = await start_tcp_server([simple_device(1, [7])])
    closed = socket.socket()  # bound, never listening: connecting to it is refused
    closed.bind(("127.0.0.1", 0))
    reg = {"sensor": "r0", "address": 0, "type": "int16", "unit": "1"}
    cfg = modbus_config(
        upstream_broker,
        {
            "interval": "200ms",
            "backoff_max": "1s",
            "devices": [
                {"id": "mb-up", "host": "127.0.0.1", "port": port, "registers": [reg]},
                {
                    "id": "mb-gone",
                    "host": "127.0.0.1",
                    "port": closed.getsockname()[1],
                    "registers": [reg],
                },
            ],
        },
    )
    try:
        running = await start_agent(cfg)
        port_m = await metrics_port(running)
        source = running.agent.modbus
        assert source is not None and source in running.agent.sources
        dev = source.devices
        await async_wait_until(
            lambda: (
                "mb-up" in running.agent.pipeline.device_sources
                and dev["mb-gone"].errors["disconnected"] >= 1
            ),
            10,
            "one device's reading taken, the other refused",
        )
        doc = await health_doc(port_m)
        m = doc["sources"]["modbus"]
        assert m["state"] == "degraded" and m["configured"] == 2 and m["devices"] == 1
        assert (m["lines"], m["lines_up"], m["paused"]) == (2, 1, False)
        assert m["parts"]["mb-up"]["state"] == "up" and m["parts"]["mb-up"]["errors"] == 0
        gone = m["parts"]["mb-gone"]
        assert gone["state"] == "down" and gone["errors_disconnected"] >= 1
        assert gone["line"] == f"tcp:127.0.0.1:{closed.getsockname()[1]}"
        samples = await scrape(port_m)
        assert part_up(samples, "modbus", "mb-up") == 1
        assert part_up(samples, "modbus", "mb-gone") == 0
        assert state_of(samples, "modbus") == "degraded"
    finally:
        closed.close()
        await stop_server(server)
