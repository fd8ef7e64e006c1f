"""The Modbus source against pymodbus' own server: over an RS-485 line of pty pairs (RTU) and
over loopback TCP, a map of every data type and order is read, signed and delivered upstream
with exactly the served values; a silent unit, an exception 2 and a corrupted frame are
counted per device while the other devices keep their schedule."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.attest.observation import verify_envelope
from agent.localbroker import LocalMosquitto
from tests.support.modbus_peers import (
    RtuWire,
    served_map,
    simple_device,
    start_rtu_server,
    start_tcp_server,
    stop_server,
)

from .conftest import Collector, async_wait_until


def modbus_config(upstream: LocalMosquitto, modbus: dict[str, Any]) -> dict[str, Any]:
    return {
        "gateway": {"key_file": "gateway.key", "data_dir": "data", "chain_id": 31337},
        "sources": {"mqtt": {"enabled": False}, "modbus": modbus},
        "bridge": {"url": upstream.url},
        "metrics": {"listen": "127.0.0.1:0"},
    }


def latest(collector: Collector, device: str) -> dict[str, dict[str, Any]]:
    """The newest observation per sensor of a device."""
    out: dict[str, dict[str, Any]] = {}
    for o in collector.observations():
        if o["reading"]["device"] == device:
            out[o["reading"]["sensor"]] = o
    return out


def check_exact(collector: Collector, device: str, expected: dict[str, str]) -> None:
    got = latest(collector, device)
    assert {s: o["reading"]["value"] for s, o in got.items()} == expected
    for o in got.values():
        v = verify_envelope(o)
        assert v.reading.transport == "modbus" and v.reading.auth == "allowlist"
        assert v.reading.decimal == o["reading"]["value"]


async def test_rtu_bus_delivers_every_type_exactly_and_counts_silence_exception_and_crc(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    wire = RtuWire(tmp_path)
    meter, served = served_map()
    server = await start_rtu_server(
        wire.server_port, [meter, simple_device(3, [7, 8]), simple_device(4, [42])]
    )
    wire.start()
    wire.silent.add(2)  # unit 2 is configured but nobody answers for it
    wire.corrupt.add(4)  # unit 4's answers arrive with a flipped bit
    reg = {"sensor": "r0", "address": 0, "type": "int16", "unit": "1"}
    cfg = modbus_config(
        upstream_broker,
        {
            "interval": "300ms",
            "backoff_max": "1s",
            "buses": [
                {
                    "name": "rs485",
                    "port": str(wire.link),
                    "baud": 9600,
                    "framing": "8N2",
                    "timeout": "200ms",
                }
            ],
            "devices": [
                {
                    "id": "meter-1",
                    "bus": "rs485",
                    "unit": 1,
                    "registers": [s.register for s in served],
                },
                {"id": "gone-2", "bus": "rs485", "unit": 2, "registers": [reg]},
                {
                    "id": "partial-3",
                    "bus": "rs485",
                    "unit": 3,
                    # 0-1 exist; 50 does not: exception 2 for that read only
                    "registers": [reg, {**reg, "sensor": "r50", "address": 50}],
                },
                {"id": "crc-4", "bus": "rs485", "unit": 4, "registers": [reg]},
            ],
        },
    )
    try:
        running = await start_agent(cfg)
        source = running.agent.modbus
        assert source is not None
        expected = {s.register["sensor"]: s.expected for s in served}
        await async_wait_until(
            lambda: len(latest(collector, "meter-1")) == len(expected), 20, "map"
        )
        check_exact(collector, "meter-1", expected)
        # The faulty units are counted by kind; the meter keeps being polled meanwhile.
        dev = source.devices
        await async_wait_until(
            lambda: (
                dev["gone-2"].errors["timeout"] >= 2
                and dev["crc-4"].errors["crc"] >= 2
                and dev["partial-3"].errors["illegal_address"] >= 2
            ),
            20,
            "faults counted",
        )
        polls = dev["meter-1"].polls
        await async_wait_until(lambda: dev["meter-1"].polls >= polls + 3, 20, "meter on schedule")
        assert dev["meter-1"].errors == {}
        assert {s: o["reading"]["value"] for s, o in latest(collector, "partial-3").items()} == {
            "r0": "7"
        }
        assert latest(collector, "gone-2") == {} and latest(collector, "crc-4") == {}
        health = source.health()
        assert health.state == "degraded"
        assert health.parts["meter-1"].state == "up"
        assert health.parts["gone-2"].state == "down"
        assert health.parts["partial-3"].state == "degraded"
        assert health.parts["crc-4"].detail["errors_crc"] == dev["crc-4"].errors["crc"]
        # Gateway-clock counters: strictly increasing per device, in milliseconds.
        counters = sorted(
            {
                o["message"]["deviceCounter"]
                for o in collector.observations()
                if o["reading"]["device"] == "meter-1"
            }
        )
        assert len(counters) >= 2 and counters[0] > 1_700_000_000_000
        m = running.agent.metrics
        assert m.get("frames_rejected") == 0
        assert m.get("modbus_faults", device="meter-1", kind="timeout") == 0
    finally:
        await wire.close()
        await stop_server(server)


class SilentTcpDevice:
    """Accepts a Modbus TCP connection and never answers (a device that hangs)."""

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while await r.read(4096):
            pass
        w.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_tcp_devices_are_polled_in_parallel_and_a_hanging_one_costs_the_others_nothing(
    upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    meter, served = served_map()
    server, port = await start_tcp_server([meter, simple_device(3, [5])])
    silent = SilentTcpDevice()
    silent_port = await silent.start()
    reg = {"sensor": "r0", "address": 0, "type": "int16", "unit": "1"}
    cfg = modbus_config(
        upstream_broker,
        {
            "interval": "200ms",
            "devices": [
                {
                    "id": "tcp-meter",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit": 1,
                    "registers": [s.register for s in served],
                },
                {
                    "id": "tcp-hang",
                    "host": "127.0.0.1",
                    "port": silent_port,
                    "timeout": "5s",  # far longer than the others' interval
                    "registers": [reg],
                },
                {
                    "id": "tcp-exc",
                    "host": "127.0.0.1",
                    "port": port,
                    "unit": 3,
                    "registers": [{**reg, "address": 9}],
                },
            ],
        },
    )
    try:
        running = await start_agent(cfg)
        source = running.agent.modbus
        assert source is not None
        expected = {s.register["sensor"]: s.expected for s in served}
        await async_wait_until(
            lambda: len(latest(collector, "tcp-meter")) == len(expected), 20, "map"
        )
        check_exact(collector, "tcp-meter", expected)
        dev = source.devices
        # While tcp-hang's first request waits out its 5 s timeout, the meter goes on.
        polls = dev["tcp-meter"].polls
        await async_wait_until(lambda: dev["tcp-meter"].polls >= polls + 5, 4, "meter polled")
        assert dev["tcp-hang"].polls == 0
        await async_wait_until(lambda: dev["tcp-exc"].errors["illegal_address"] >= 1, 10, "exc 2")
        await async_wait_until(lambda: dev["tcp-hang"].errors["timeout"] >= 1, 10, "timeout")
        assert dev["tcp-meter"].errors == {}
    finally:
        await silent.close()
        await stop_server(server)


async def test_a_bus_unplugged_and_replugged_is_counted_once_per_device_and_polling_resumes(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    wire = RtuWire(tmp_path)
    server = await start_rtu_server(
        wire.server_port, [simple_device(1, [11]), simple_device(2, [22])]
    )
    wire.start()
    reg = {"sensor": "r0", "address": 0, "type": "int16", "unit": "1"}
    cfg = modbus_config(
        upstream_broker,
        {
            "interval": "200ms",
            "buses": [{"name": "b", "port": str(wire.link), "framing": "8N2", "timeout": "200ms"}],
            "devices": [
                {"id": "d1", "bus": "b", "unit": 1, "registers": [reg]},
                {"id": "d2", "bus": "b", "unit": 2, "registers": [reg]},
            ],
        },
    )
    try:
        running = await start_agent(cfg)
        source = running.agent.modbus
        assert source is not None
        (line,) = source.lines
        dev = source.devices
        await async_wait_until(lambda: dev["d1"].polls >= 2 and dev["d2"].polls >= 2, 10, "polls")
        await wire.unplug()
        await async_wait_until(lambda: not line.connected, 10, "the loss noticed")
        await asyncio.sleep(1.5)  # several reopen attempts fail meanwhile: one outage
        assert source.health().parts["d1"].state == "down"
        polls = dev["d1"].polls
        wire.plug()
        await async_wait_until(lambda: line.opened == 2, 20, "line reopened")
        await async_wait_until(lambda: dev["d1"].polls >= polls + 2, 10, "polling resumed")
        assert dev["d1"].errors["disconnected"] == 1 and dev["d2"].errors["disconnected"] == 1
        await async_wait_until(lambda: source.health().state == "up", 10, "both up again")
        assert {s: o["reading"]["value"] for s, o in latest(collector, "d2").items()} == {
            "r0": "22"
        }
    finally:
        await wire.close()
        await stop_server(server)
