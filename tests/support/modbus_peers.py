"""Real Modbus peers for tests and benchmarks: pymodbus' own server (simulator datastore) over
loopback TCP, and over an RS-485 line made of two pseudo-terminal pairs joined by a relay.

The relay is the wire: it passes each request from the agent's port to the server's port and
the answer back, and can play the faults a real bus has: a unit that nobody answers for
(silence), an answer with one bit flipped (CRC), or a unit answered by the test itself
(a hostile device). With `baud` it also takes as long as a real line of that speed would.
The register map's values are encoded here with pymodbus' own converter plus a byte swap,
independently of the agent's codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

DT = AsyncModbusTcpClient.DATATYPE


@dataclass(frozen=True)
class Served:
    """One served value: the config entry that reads it and the decimal text it must become."""

    register: dict[str, Any]
    expected: str


def _swap_bytes(words: list[int]) -> list[int]:
    return [((w & 0xFF) << 8) | (w >> 8) for w in words]


def served_map() -> tuple[SimDevice, list[Served]]:
    """Unit 1: every data type in every word and byte order (holding registers), a meter's
    float32 input registers, coils, discrete inputs and a bit of a status register."""
    holding: list[int] = []
    served: list[Served] = []
    ints = {
        "int16": (DT.INT16, -12345),
        "uint16": (DT.UINT16, 54321),
        "int32": (DT.INT32, -123456789),
        "uint32": (DT.UINT32, 3_000_000_000),
        "int64": (DT.INT64, -1_234_567_890_123_456_789),
        "uint64": (DT.UINT64, 18_000_000_000_000_000_000),
    }
    floats = {
        "float32": (DT.FLOAT32, 230.1, 2, "230.10"),
        "float64": (DT.FLOAT64, -12345.6789, 4, "-12345.6789"),
    }
    orders: list[tuple[Literal["big", "little"], Literal["big", "little"]]] = [
        ("big", "big"),
        ("little", "big"),
        ("big", "little"),
        ("little", "little"),
    ]
    for name, (dt, value) in ints.items():
        for word, byte in orders:
            regs = AsyncModbusTcpClient.convert_to_registers(value, dt, word_order=word)
            if len(regs) == 1 and word == "little":
                continue  # word order does not apply to one register
            regs = _swap_bytes(regs) if byte == "little" else regs
            scale = -2 if name == "int32" else 0
            reg: dict[str, Any] = {
                "sensor": f"{name}_{word[0]}{byte[0]}",
                "address": len(holding),
                "type": name,
                "unit": "1",
                "byte_order": byte,
            }
            if len(regs) > 1:
                reg["word_order"] = word
            if scale:
                reg["scale"] = scale
            served.append(Served(reg, format(Decimal(value).scaleb(scale), "f")))
            holding += regs
    for name, (dt, fvalue, decimals, text) in floats.items():
        for word, byte in orders:
            regs = AsyncModbusTcpClient.convert_to_registers(fvalue, dt, word_order=word)
            regs = _swap_bytes(regs) if byte == "little" else regs
            reg = {
                "sensor": f"{name}_{word[0]}{byte[0]}",
                "address": len(holding),
                "type": name,
                "unit": "V",
                "word_order": word,
                "byte_order": byte,
                "decimals": decimals,
            }
            served.append(Served(reg, text))
            holding += regs
    status = len(holding)
    holding.append(0b0000_0000_0010_0100)  # bits 2 and 5 set
    served += [
        Served(
            {"sensor": "status_b2", "address": status, "type": "bool", "bit": 2, "unit": "1"}, "1"
        ),
        Served(
            {"sensor": "status_b3", "address": status, "type": "bool", "bit": 3, "unit": "1"}, "0"
        ),
    ]
    # An energy meter's input registers: voltage, current, power as float32 (Eastron style).
    meter = [
        ("voltage", 229.87, "229.87", "V"),
        ("current", 1.234, "1.23", "A"),
        ("power", 283.5, "283.50", "W"),
    ]
    inputs: list[int] = []
    for sensor, v, text, unit in meter:
        reg = {
            "sensor": sensor,
            "table": "input",
            "address": len(inputs),
            "type": "float32",
            "decimals": 2,
            "unit": unit,
        }
        served.append(Served(reg, text))
        inputs += AsyncModbusTcpClient.convert_to_registers(v, DT.FLOAT32)
    served += [
        Served(
            {"sensor": "coil_0", "table": "coil", "address": 0, "type": "bool", "unit": "1"}, "1"
        ),
        Served(
            {"sensor": "coil_1", "table": "coil", "address": 1, "type": "bool", "unit": "1"}, "0"
        ),
        Served(
            {"sensor": "input_1", "table": "discrete", "address": 1, "type": "bool", "unit": "1"},
            "1",
        ),
    ]
    device = SimDevice(
        id=1,
        simdata=(
            [SimData(0, values=[True, False, True], datatype=DataType.BITS)],
            [SimData(0, values=[False, True], datatype=DataType.BITS)],
            [SimData(0, values=holding, datatype=DataType.REGISTERS)],
            [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
        ),
    )
    return device, served


def simple_device(unit: int, registers: list[int]) -> SimDevice:
    """A device with `registers` as holding registers from address 0 (nothing else)."""
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, values=[False], datatype=DataType.BITS)],
            [SimData(0, values=[False], datatype=DataType.BITS)],
            [SimData(0, values=registers, datatype=DataType.REGISTERS)],
            [SimData(0, values=[0], datatype=DataType.REGISTERS)],
        ),
    )


async def start_tcp_server(devices: list[SimDevice]) -> tuple[ModbusTcpServer, int]:
    """pymodbus' TCP server on a free loopback port."""
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    port: int = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return server, port


class _FdReader:
    """Buffered non-blocking reads of a pty master on the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.more = asyncio.Event()
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except OSError:
            data = b""
        if data:
            self.buf += data
            self.more.set()

    async def read(self, n: int, limit: float | None = None) -> bytes:
        async with asyncio.timeout(limit):
            while len(self.buf) < n:
                self.more.clear()
                await self.more.wait()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)


def _pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line discipline before the port is configured
    return master, slave


class RtuWire:
    """The RS-485 line: the agent opens `link`, pymodbus' serial server opens `server_port`."""

    def __init__(
        self, directory: Path, *, baud: int | None = None, bits_per_char: int = 11
    ) -> None:
        self.link = directory / "ttyRS485"
        self.baud = baud
        self.bits_per_char = bits_per_char  # start + 8 data + parity + stop (8E1)
        self.silent: set[int] = set()  # units nobody answers for (absent devices)
        self.corrupt: set[int] = set()  # units whose answers get one bit flipped on the wire
        self.hostile: dict[int, Callable[[bytes], bytes]] = {}  # units the test answers itself
        self.requests: dict[int, int] = {}
        self.wire_s = 0.0  # time the line carried bytes (at `baud`)
        self.agent_master, self._agent_slave = _pty()
        self.server_master, self._server_slave = _pty()
        self.server_port = os.ttyname(self._server_slave)
        self._plug_link()
        self._task: asyncio.Task[None] | None = None

    def _plug_link(self) -> None:
        tmp = self.link.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(self._agent_slave))
        os.replace(tmp, self.link)

    async def _carry(self, fd: int, data: bytes) -> None:
        if self.baud:
            t = len(data) * self.bits_per_char / self.baud
            self.wire_s += t
            await asyncio.sleep(t)
        os.write(fd, data)

    async def _relay(self) -> None:
        agent = _FdReader(self.agent_master)
        server = _FdReader(self.server_master)
        try:
            while True:
                req = await agent.read(8)  # function codes 1-4: unit fc addr(2) count(2) crc(2)
                unit = req[0]
                self.requests[unit] = self.requests.get(unit, 0) + 1
                if self.baud:  # the request's own time on the wire
                    self.wire_s += len(req) * self.bits_per_char / self.baud
                    await asyncio.sleep(len(req) * self.bits_per_char / self.baud)
                if unit in self.silent:
                    continue
                if unit in self.hostile:
                    answer = self.hostile[unit](req)
                    if answer:
                        await self._carry(self.agent_master, answer)
                    continue
                server.buf.clear()
                os.write(self.server_master, req)
                try:
                    head = await server.read(3, limit=1.0)
                    rest = await server.read(2 if head[1] & 0x80 else head[2] + 2, limit=1.0)
                except TimeoutError:
                    continue
                frame = bytearray(head + rest)
                if unit in self.corrupt:
                    frame[3] ^= 0x01  # one bit on the wire: the CRC no longer matches
                await self._carry(self.agent_master, bytes(frame))
        finally:
            agent.close()
            server.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._relay())

    async def _stop_relay(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def unplug(self) -> None:
        """The USB adapter pulled: the agent's side of the line is gone."""
        await self._stop_relay()
        for fd in (self.agent_master, self._agent_slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def plug(self) -> None:
        """Plugged back in: a new device node behind the same stable link."""
        self.agent_master, self._agent_slave = _pty()
        self._plug_link()
        self.start()

    async def close(self) -> None:
        await self._stop_relay()
        for fd in (self.agent_master, self._agent_slave, self.server_master, self._server_slave):
            with contextlib.suppress(OSError):
                os.close(fd)


async def stop_server(server: ModbusSerialServer | ModbusTcpServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]


async def start_rtu_server(
    port: str, devices: list[SimDevice], baud: int = 9600
) -> ModbusSerialServer:
    # 8N2: the standard's framing without parity (11-bit characters, as 8E1). Linux ptys refuse
    # a second reconfiguration with parity enabled, which pymodbus' serial transport makes.
    server = ModbusSerialServer(
        devices, framer=FramerType.RTU, port=port, baudrate=baud, parity="N", stopbits=2
    )
    await server.serve_forever(background=True)
    return server
