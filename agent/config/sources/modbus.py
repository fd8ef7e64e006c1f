"""[sources.modbus]: RTU buses ([[sources.modbus.buses]]), Modbus devices on a bus or over TCP
([[sources.modbus.devices]]) and their register maps ([[sources.modbus.devices.registers]]).
Every error names the file and the key with the entry's index (devices[0].registers[2].address).

The rules a single register obeys live in the pure codec (`point_problem`); this module adds
what needs the whole map: overlaps, duplicate sensors, units and devices, unknown buses. That a
Modbus device id is listed by no other source is a check across tables (agent/config/checks.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, cast

from agent.config.reader import Section
from agent.modbusmap import (
    MAX_READ_REGISTERS,
    DataType,
    Order,
    Point,
    Table,
    overlap,
    point_problem,
)
from agent.model import NAME_RE, UNIT_RE

_BUS_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
RTU_UNITS = (1, 247)  # 0 is broadcast (never answered), 248-255 are reserved
TCP_UNITS = (0, 255)  # a TCP device or gateway may use any
DEFAULT_TABLE = Table.HOLDING  # a register's `table` when it names none
_POINT = {f.name: f.default for f in fields(Point)}  # the codec's defaults (Point has slots)


@dataclass(frozen=True, kw_only=True)
class ModbusBusConfig:
    """An RS-485 line (Modbus RTU): one serial port, polled by one task."""

    name: str
    port: Path
    baud: int = 9600
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "E"  # the Modbus serial-line default is 8E1
    stopbits: int = 1
    timeout_s: float = 0.5  # for one answer; a silent device costs the line this long


@dataclass(frozen=True, kw_only=True)
class ModbusRegisterConfig:
    """One value of a device's map and how often it is read: its own `interval`, else its
    device's, else [sources.modbus]'s, else this default."""

    point: Point
    interval_s: float = 10.0


@dataclass(frozen=True, kw_only=True)
class ModbusDeviceConfig:
    """A Modbus device: on an RTU bus (`bus`) or over TCP (`host`, `port`), at `unit`."""

    device_id: str
    registers: tuple[ModbusRegisterConfig, ...]
    unit: int = 1
    bus: str | None = None
    host: str | None = None
    port: int = 502
    timeout_s: float = 1.0  # TCP: the device's own; RTU: the bus's (one line, one timeout)
    max_registers: int = MAX_READ_REGISTERS  # per read (some devices take fewer)
    max_gap: int = 0  # unused registers a read may span to join two ranges

    @property
    def line(self) -> str:
        """The connection the device is reached over: devices on one line are polled in turn
        (an RS-485 bus, or one TCP endpoint such as a Modbus TCP-to-RTU gateway)."""
        return f"rtu:{self.bus}" if self.bus is not None else f"tcp:{self.host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class ModbusSourceConfig:
    """[sources.modbus]: the source runs when at least one device is listed."""

    buses: tuple[ModbusBusConfig, ...] = ()
    devices: tuple[ModbusDeviceConfig, ...] = ()
    backoff_max_s: float = 60.0  # a failing device is polled at least this often

    @property
    def device_ids(self) -> frozenset[str]:
        return frozenset(d.device_id for d in self.devices)


def read_modbus_source(sec: Section) -> ModbusSourceConfig:
    """Read [sources.modbus]; ends with `sec.done()` (unknown keys are refused)."""
    S = ModbusSourceConfig
    buses: dict[str, ModbusBusConfig] = {}
    for b in sec.sub_list("buses"):
        bus = _bus(b)
        if bus.name in buses:
            raise b.err("name", f"bus {bus.name!r} is defined twice")
        if any(o.port == bus.port for o in buses.values()):
            raise b.err("port", f"{bus.port} is already another bus: one reader per port")
        buses[bus.name] = bus
    interval = sec.duration("interval", ModbusRegisterConfig.interval_s)
    devices: list[ModbusDeviceConfig] = []
    ids: dict[str, str] = {}
    units: dict[tuple[str, int], str] = {}
    for d in sec.sub_list("devices"):
        dev = _device(d, buses, interval)
        if dev.device_id in ids:
            raise d.err("id", f"{dev.device_id!r} is already {ids[dev.device_id]}")
        ids[dev.device_id] = d.key("id")
        at = (dev.line, dev.unit)
        if at in units:
            raise d.err("unit", f"unit {dev.unit} on {dev.line} is already device {units[at]!r}")
        units[at] = dev.device_id
        devices.append(dev)
    cfg = ModbusSourceConfig(
        buses=tuple(buses.values()),
        devices=tuple(devices),
        backoff_max_s=sec.duration("backoff_max", S.backoff_max_s),
    )
    sec.done()
    return cfg


def _bus(b: Section) -> ModbusBusConfig:
    B = ModbusBusConfig
    name = b.get("name", str, required=True)
    if not _BUS_NAME_RE.fullmatch(name):
        raise b.err("name", f"must be 1-32 of A-Z a-z 0-9 _ . -; got {name!r}")
    framing = b.get("framing", str, f"{B.bytesize}{B.parity}{B.stopbits}")
    if not re.fullmatch(r"[78][NEO][12]", framing):
        raise b.err(
            "framing",
            f"must be data bits (7 or 8), parity (N, E or O), stop bits (1 or 2) such as 8E1; "
            f"got {framing!r}",
        )
    bus = ModbusBusConfig(
        name=name,
        port=cast(Path, b.path("port", required=True)),
        baud=b.int_range("baud", B.baud, 300, 4_000_000),
        bytesize=int(framing[0]),
        parity=cast(Literal["N", "E", "O"], framing[1]),
        stopbits=int(framing[2]),
        timeout_s=b.duration("timeout", B.timeout_s),
    )
    b.done()
    return bus


def _device(
    d: Section, buses: Mapping[str, ModbusBusConfig], interval: float
) -> ModbusDeviceConfig:
    D = ModbusDeviceConfig
    device_id = cast(str, d.device_id("id", required=True))
    bus = d.get("bus", str)
    host = d.get("host", str)
    if (bus is None) == (host is None):
        raise d.err("bus", "give either bus = NAME (Modbus RTU) or host = ADDRESS (Modbus TCP)")
    if bus is not None and bus not in buses:
        known = ", ".join(sorted(buses)) or "none: add a [[sources.modbus.buses]]"
        raise d.err("bus", f"{bus!r} is not a bus; defined: {known}")
    for k in ("port", "timeout"):
        if bus is not None and k in d.data:
            raise d.err(k, f"is for Modbus TCP devices (host); an RTU device uses its bus's {k}")
    unit = d.int_range("unit", D.unit, *(RTU_UNITS if bus is not None else TCP_UNITS))
    max_registers = d.int_range("max_registers_per_read", D.max_registers, 1, MAX_READ_REGISTERS)
    max_gap = d.int_range("max_gap", D.max_gap, 0, max_registers - 1)
    interval = d.duration("interval", interval)
    registers: list[ModbusRegisterConfig] = []
    where: list[str] = []
    for r in d.sub_list("registers"):
        reg = _register(r, interval)
        p = reg.point
        for prev, key in zip(registers, where, strict=True):
            if prev.point.sensor == p.sensor:
                raise r.err("sensor", f"{p.sensor!r} is already {key}")
            if overlap(prev.point, p):
                q = prev.point
                raise r.err(
                    "address",
                    f"{p.table} {p.address}-{p.end - 1} overlaps {key} ({q.sensor!r}, "
                    f"{q.table} {q.address}-{q.end - 1}); each register is read by one entry "
                    "(bools in one register need different bits)",
                )
        registers.append(reg)
        where.append(r.name.rsplit(".", 1)[-1])
    if not registers:
        raise d.err(
            "registers", "must list at least one register ([[sources.modbus.devices.registers]])"
        )
    dev = ModbusDeviceConfig(
        device_id=device_id,
        unit=unit,
        registers=tuple(registers),
        bus=bus,
        host=host,
        port=d.int_range("port", D.port, 1, 65535) if host is not None else D.port,
        timeout_s=d.duration("timeout", D.timeout_s) if bus is None else buses[bus].timeout_s,
        max_registers=max_registers,
        max_gap=max_gap,
    )
    d.done()
    return dev


def _register(r: Section, interval: float) -> ModbusRegisterConfig:
    sensor = r.get("sensor", str, required=True)
    if not NAME_RE.match(sensor):
        raise r.err("sensor", f"{sensor!r} must be 1-32 of A-Z a-z 0-9 _ . : -")
    unit = r.get("unit", str, required=True)
    if not UNIT_RE.match(unit):
        raise r.err("unit", f"{unit!r} must be 1-32 printable ASCII characters, no space (UCUM)")
    P = _POINT
    table = Table(r.choice("table", DEFAULT_TABLE, tuple(t.value for t in Table)))
    types = tuple(t.value for t in DataType)
    if "type" not in r.data:
        raise r.err("type", f"is required: one of {', '.join(types)}")
    dtype = DataType(r.choice("type", types[0], types))
    orders = tuple(o.value for o in Order)
    point = Point(
        sensor=sensor,
        table=table,
        address=r.get("address", int, required=True),
        dtype=dtype,
        unit=unit,
        scale=r.get("scale", int, P["scale"]),
        decimals=r.get("decimals", int, P["decimals"]),
        word_order=Order(r.choice("word_order", cast(str, P["word_order"]), orders)),
        byte_order=Order(r.choice("byte_order", cast(str, P["byte_order"]), orders)),
        bit=r.get("bit", int, P["bit"]),
    )
    count = r.get("count", int)
    if count is not None and count != point.count:
        what = "bit" if table.is_bits else ("register" if point.count == 1 else "registers")
        raise r.err("count", f"type {dtype} takes {point.count} {what}; count is {count}")
    problem = point_problem(point)
    if problem is not None:
        raise r.err(*problem)
    reg = ModbusRegisterConfig(point=point, interval_s=r.duration("interval", interval))
    r.done()
    return reg


__all__ = [
    "ModbusBusConfig",
    "ModbusDeviceConfig",
    "ModbusRegisterConfig",
    "ModbusSourceConfig",
    "read_modbus_source",
]
