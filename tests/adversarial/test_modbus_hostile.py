"""Hostile Modbus answers never crash the source nor stall the other devices: a unit on the
same RS-485 line (and a TCP server beside a good one) that answers with another unit id, a
byte count that lies, too few or too many registers, the wrong function, exception floods
with unknown codes, garbage and torn connections, one after another. The good meter keeps
being read on its schedule, and every hostile answer is counted against the hostile device."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pymodbus.framer import FramerRTU

from agent.localbroker import LocalMosquitto
from tests.integration.conftest import Collector, async_wait_until
from tests.support.modbus_peers import (
    RtuWire,
    served_map,
    simple_device,
    start_rtu_server,
    start_tcp_server,
    stop_server,
)


def crc(body: bytes) -> bytes:
    """RTU frame check, by pymodbus' own implementation (independent of the agent's)."""
    value: int = FramerRTU.compute_CRC(body)
    return value.to_bytes(2, "big")


def rtu(body: bytes) -> bytes:
    return body + crc(body)


def rtu_answers(unit: int) -> Iterator[Callable[[bytes], bytes]]:
    """Hostile answers to a read request (unit fc addr count crc), in turn, forever."""

    def count(req: bytes) -> int:
        return int.from_bytes(req[4:6], "big")

    cases: list[Callable[[bytes], bytes]] = [
        lambda req: rtu(bytes([unit + 1, req[1], 2 * count(req)]) + b"\x00" * 2 * count(req)),
        lambda req: rtu(bytes([unit, req[1], 250]) + b"\x01\x02"),  # byte count lies (long)
        lambda req: rtu(bytes([unit, req[1], 2]) + b"\x00\x01"),  # fewer registers than asked
        lambda req: rtu(bytes([unit, req[1], 2 * count(req) + 4]) + b"\x00" * (2 * count(req) + 4)),
        lambda req: rtu(
            bytes([unit, 0x04 if req[1] == 3 else 3, 2 * count(req)]) + b"\x00" * 2 * count(req)
        ),
        lambda req: rtu(bytes([unit, req[1] | 0x80, 0x55])),  # an exception code nobody defines
        lambda req: rtu(bytes([unit, req[1] | 0x80, 0x06])),  # device busy
        lambda req: rtu(bytes([unit, req[1] | 0x80, 0x02])),  # illegal address
        lambda req: bytes(range(256)) * 2,  # garbage, more than any frame
        lambda req: b"",  # silence
        lambda req: rtu(bytes([unit, req[1]])),  # no byte count at all
    ]
    return itertools.cycle(cases)


def modbus_config(upstream: LocalMosquitto, modbus: dict[str, Any]) -> dict[str, Any]:
    return {
        "gateway": {"key_file": "gateway.key", "data_dir": "data", "chain_id": 31337},
        "sources": {"mqtt": {"enabled": False}, "modbus": modbus},
        "bridge": {"url": upstream.url},
        "metrics": {"listen": "127.0.0.1:0"},
    }


def meter_counters(collector: Collector, device: str) -> set[int]:
    return {
        o["message"]["deviceCounter"]
        for o in collector.observations()
        if o["reading"]["device"] == device
    }


async def test_a_hostile_unit_on_the_bus_never_crashes_the_source_nor_stalls_the_meter(
    tmp_path: Path, upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    wire = RtuWire(tmp_path)
    meter, served = served_map()
    server = await start_rtu_server(wire.server_port, [meter])
    answers = rtu_answers(9)
    wire.hostile[9] = lambda req: next(answers)(req)
    wire.start()
    reg = {"sensor": "r0", "address": 0, "type": "uint32", "unit": "1"}
    cfg = modbus_config(
        upstream_broker,
        {
            "interval": "100ms",
            "backoff_max": "200ms",  # keep the hostile unit asked often
            "buses": [{"name": "b", "port": str(wire.link), "framing": "8N2", "timeout": "300ms"}],
            "devices": [
                {"id": "meter-1", "bus": "b", "unit": 1, "registers": [s.register for s in served]},
                {"id": "evil-9", "bus": "b", "unit": 9, "registers": [reg]},
            ],
        },
    )
    try:
        running = await start_agent(cfg)
        source = running.agent.modbus
        assert source is not None
        evil = source.devices["evil-9"]
        await async_wait_until(lambda: wire.requests.get(9, 0) >= 33, 60, "three hostile rounds")
        before = len(meter_counters(collector, "meter-1"))
        await async_wait_until(
            lambda: len(meter_counters(collector, "meter-1")) >= before + 3, 20, "meter still read"
        )
        assert meter_counters(collector, "evil-9") == set()  # nothing hostile was signed
        kinds = set(evil.errors)
        assert {"wrong_unit", "timeout", "device_busy", "illegal_address"} <= kinds, kinds
        assert "exception_85" in kinds and "bad_response" in kinds, kinds
        assert sum(evil.errors.values()) >= 30
        assert running.agent.metrics.get("component_restarts") == 0
    finally:
        await wire.close()
        await stop_server(server)


class HostileTcpServer:
    """Answers Modbus TCP requests with a different lie each time, sometimes hanging up."""

    def __init__(self) -> None:
        self.requests = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def _answer(self, req: bytes, n: int) -> bytes | None:
        tid, unit, fc = req[0:2], req[6], req[7]
        count = struct.unpack(">H", req[10:12])[0]

        def mbap(pdu: bytes, unit_id: int = unit, length: int | None = None) -> bytes:
            ln = len(pdu) + 1 if length is None else length
            return tid + b"\x00\x00" + struct.pack(">H", ln) + bytes([unit_id]) + pdu

        regs = b"\x00" * 2 * count
        cases: list[bytes | None] = [
            mbap(bytes([fc, len(regs)]) + regs, unit_id=unit + 1),  # another unit
            b"\xff\xff" + mbap(bytes([fc, len(regs)]) + regs)[2:],  # another transaction
            mbap(bytes([fc, 2]) + b"\x00\x01"),  # too few registers
            mbap(bytes([fc, len(regs)]) + regs, length=65535),  # a length that lies
            mbap(bytes([fc | 0x80, 0x04])),  # device failure
            mbap(bytes([fc | 0x80, 0xEE])),  # an undefined exception code
            bytes(300),  # garbage
            None,  # hang up
        ]
        return cases[n % len(cases)]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while req := await r.readexactly(12):
                self.requests += 1
                answer = self._answer(req, self.requests)
                if answer is None:
                    break
                w.write(answer)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_a_hostile_tcp_server_beside_a_good_one_is_counted_and_contained(
    upstream_broker: LocalMosquitto, collector: Collector, start_agent: Any
) -> None:
    server, port = await start_tcp_server([simple_device(1, [1, 2, 3])])
    hostile = HostileTcpServer()
    hostile_port = await hostile.start()
    reg = {"sensor": "r0", "address": 0, "type": "uint32", "unit": "1"}
    cfg = modbus_config(
        upstream_broker,
        {
            "interval": "100ms",
            "backoff_max": "200ms",
            "devices": [
                {"id": "good", "host": "127.0.0.1", "port": port, "registers": [reg]},
                {
                    "id": "evil",
                    "host": "127.0.0.1",
                    "port": hostile_port,
                    "timeout": "200ms",
                    "registers": [reg],
                },
            ],
        },
    )
    try:
        running = await start_agent(cfg)
        source = running.agent.modbus
        assert source is not None
        await async_wait_until(lambda: hostile.requests >= 24, 60, "three hostile rounds")
        before = len(meter_counters(collector, "good"))
        await async_wait_until(
            lambda: len(meter_counters(collector, "good")) >= before + 3, 20, "good still read"
        )
        evil = source.devices["evil"]
        assert meter_counters(collector, "evil") == set()
        assert {"wrong_unit", "device_failure", "exception_238"} <= set(evil.errors), evil.errors
        assert evil.errors["disconnected"] >= 1  # the hang-ups
        assert source.devices["good"].errors == {}
        assert running.agent.metrics.get("component_restarts") == 0
    finally:
        await hostile.close()
        await stop_server(server)
