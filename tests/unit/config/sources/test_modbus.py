"""[sources.modbus] (agent/config/sources/modbus.py): buses, devices and register maps load into
dataclasses with the fields' defaults, and every refusal names the file and the key (overlapping
ranges, a type that does not fit its count, an address out of range, an unknown bus, a device id
another source already lists: that last one is agent/config/checks.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import (
    ModbusBusConfig,
    ModbusDeviceConfig,
    ModbusRegisterConfig,
    ModbusSourceConfig,
)
from agent.devices.codecs.modbus import DataType, Order, Table
from tests.unit.config.helpers import MINIMAL, load, refusal

BASE = MINIMAL + '[sources.mqtt]\nallowed_devices = ["dev-1"]\n'

METER = """
[sources.modbus]
interval = "5s"
[[sources.modbus.buses]]
name = "rs485"
port = "/dev/ttyUSB0"
baud = 19200
framing = "8N2"
[[sources.modbus.devices]]
id = "meter-1"
bus = "rs485"
unit = 3
[[sources.modbus.devices.registers]]
sensor = "voltage"
table = "input"
address = 0
type = "float32"
decimals = 2
unit = "V"
[[sources.modbus.devices.registers]]
sensor = "energy"
table = "input"
address = 342
type = "float32"
word_order = "little"
decimals = 3
unit = "kW.h"
interval = "60s"
[[sources.modbus.devices]]
id = "plc-1"
host = "192.0.2.7"
port = 1502
unit = 0
[[sources.modbus.devices.registers]]
sensor = "temp"
address = 10
type = "int16"
scale = -1
unit = "Cel"
[[sources.modbus.devices.registers]]
sensor = "running"
table = "coil"
address = 0
type = "bool"
unit = "1"
"""


def refused(tmp_path: Path, text: str) -> str:
    return refusal(tmp_path, BASE + text)[1]


def test_a_meter_on_a_bus_and_a_plc_over_tcp_load_with_their_maps(tmp_path: Path) -> None:
    cfg = load(tmp_path, BASE + METER).sources.modbus
    (bus,) = cfg.buses
    assert (bus.name, bus.port, bus.baud, bus.parity, bus.stopbits) == (
        "rs485",
        Path("/dev/ttyUSB0"),
        19200,
        "N",
        2,
    )
    meter, plc = cfg.devices
    assert (meter.line, meter.unit, meter.timeout_s) == ("rtu:rs485", 3, 0.5)
    volt, energy = meter.registers
    assert volt.interval_s == 5.0 and energy.interval_s == 60.0
    assert energy.point.word_order is Order.LITTLE and energy.point.decimals == 3
    assert volt.point.table is Table.INPUT and volt.point.dtype is DataType.FLOAT32
    assert (plc.line, plc.unit, plc.port) == ("tcp:192.0.2.7:1502", 0, 1502)
    assert plc.registers[0].point.scale == -1
    assert plc.registers[1].point.table is Table.COIL
    assert cfg.device_ids == {"meter-1", "plc-1"}


def test_no_modbus_section_means_no_devices(tmp_path: Path) -> None:
    assert load(tmp_path, BASE).sources.modbus == ModbusSourceConfig()
    assert ModbusSourceConfig().devices == ()


def test_unset_keys_take_the_dataclass_defaults(tmp_path: Path) -> None:
    text = (
        '[[sources.modbus.buses]]\nname = "b"\nport = "/dev/x"\n'
        '[[sources.modbus.devices]]\nid = "r"\nbus = "b"\n'
        '[[sources.modbus.devices.registers]]\nsensor = "a"\naddress = 0\ntype = "int16"\n'
        'unit = "V"\n'
        '[[sources.modbus.devices]]\nid = "t"\nhost = "h"\n'
        '[[sources.modbus.devices.registers]]\nsensor = "a"\naddress = 0\ntype = "int16"\n'
        'unit = "V"\n'
    )
    cfg = load(tmp_path, BASE + text).sources.modbus
    assert cfg.backoff_max_s == ModbusSourceConfig.backoff_max_s
    (bus,) = cfg.buses
    assert bus == ModbusBusConfig(name="b", port=Path("/dev/x"))
    assert (bus.baud, bus.bytesize, bus.parity, bus.stopbits) == (9600, 8, "E", 1)  # 8E1
    rtu, tcp = cfg.devices
    (reg,) = rtu.registers
    assert reg.interval_s == ModbusRegisterConfig.interval_s == 10.0
    assert reg.point.table is Table.HOLDING and reg.point.word_order is Order.BIG
    assert rtu == ModbusDeviceConfig(
        device_id="r", registers=rtu.registers, bus="b", timeout_s=bus.timeout_s
    )
    assert tcp == ModbusDeviceConfig(device_id="t", registers=tcp.registers, host="h")
    assert (tcp.unit, tcp.port, tcp.timeout_s) == (1, 502, 1.0)


def device(registers: str, head: str = 'id = "m"\nhost = "127.0.0.1"\n') -> str:
    return f"[[sources.modbus.devices]]\n{head}" + "".join(
        f"[[sources.modbus.devices.registers]]\n{r}\n" for r in registers.split("---")
    )


REG = 'sensor = "{s}"\naddress = {a}\ntype = "{t}"\nunit = "V"\n'


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            device(
                REG.format(s="a", a=0, t="float32")
                + "decimals = 1---"
                + REG.format(s="b", a=1, t="int16")
            ),
            "sources.modbus.devices[0].registers[1].address",
            "holding 1-1 overlaps registers[0] ('a', holding 0-1)",
        ),
        (
            device(REG.format(s="a", a=0, t="int32") + "count = 1"),
            "sources.modbus.devices[0].registers[0].count",
            "type int32 takes 2 registers; count is 1",
        ),
        (
            device(REG.format(s="a", a=65535, t="uint32")),
            "sources.modbus.devices[0].registers[0].address",
            "would end at 65536, past 65535",
        ),
        (
            device(REG.format(s="a", a=-1, t="uint16")),
            "sources.modbus.devices[0].registers[0].address",
            "must be 0..65535",
        ),
        (
            device(REG.format(s="a", a=0, t="float32")),
            "sources.modbus.devices[0].registers[0].decimals",
            "is required for float32",
        ),
        (
            device(REG.format(s="a", a=0, t="int8")),
            "sources.modbus.devices[0].registers[0].type",
            "must be one of int16, uint16",
        ),
        (
            device('sensor = "a"\naddress = 0\nunit = "V"'),
            "sources.modbus.devices[0].registers[0].type",
            "is required: one of int16",
        ),
        (
            device(REG.format(s="a", a=0, t="int16") + 'table = "coil"'),
            "sources.modbus.devices[0].registers[0].type",
            "must be bool",
        ),
        (
            device(REG.format(s="a", a=0, t="int16") + "---" + REG.format(s="a", a=5, t="int16")),
            "sources.modbus.devices[0].registers[1].sensor",
            "'a' is already registers[0]",
        ),
        (
            device(REG.format(s="a", a=0, t="int16") + "colour = 1"),
            "sources.modbus.devices[0].registers[0].colour",
            "is not a known key",
        ),
        (
            device(REG.format(s="a", a=0, t="int16"), 'id = "m"\n'),
            "sources.modbus.devices[0].bus",
            "either bus = NAME",
        ),
        (
            device(REG.format(s="a", a=0, t="int16"), 'id = "m"\nbus = "nope"\n'),
            "sources.modbus.devices[0].bus",
            "'nope' is not a bus",
        ),
        (
            device(REG.format(s="a", a=0, t="int16"), 'id = "dev-1"\nhost = "h"\n'),
            "sources.modbus.devices[0].id",
            "also listed in sources.mqtt.allowed_devices",
        ),
        (
            device(REG.format(s="a", a=0, t="int16"), 'id = "m"\nhost = "h"\n')
            + device(REG.format(s="a", a=0, t="int16"), 'id = "n"\nhost = "h"\n'),
            "sources.modbus.devices[1].unit",
            "unit 1 on tcp:h:502 is already device 'm'",
        ),
        (
            '[[sources.modbus.devices]]\nid = "m"\nhost = "h"\n',
            "sources.modbus.devices[0].registers",
            "at least one register",
        ),
        (
            '[[sources.modbus.buses]]\nname = "b"\nport = "/dev/x"\nframing = "8X1"\n',
            "sources.modbus.buses[0].framing",
            "such as 8E1",
        ),
    ],
)
def test_refusals_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    msg = refused(tmp_path, "[sources.modbus]\n" + text)
    assert f"[{key}]" in msg and words in msg, msg


def test_an_rtu_unit_must_be_1_to_247(tmp_path: Path) -> None:
    bus = '[[sources.modbus.buses]]\nname = "b"\nport = "/dev/x"\n'
    msg = refused(
        tmp_path,
        "[sources.modbus]\n"
        + bus
        + device(REG.format(s="a", a=0, t="int16"), 'id = "m"\nbus = "b"\nunit = 0\n'),
    )
    assert "[sources.modbus.devices[0].unit] must be between 1 and 247" in msg


@pytest.mark.parametrize(
    ("other", "where"),
    [
        ('[sources.coap]\nallowed_devices = ["m"]\n', "sources.coap.allowed_devices"),
        (
            '[[sources.coap.observe]]\ndevice = "m"\nuri = "coap://192.0.2.1/s"\n',
            "sources.coap.observe",
        ),
        ('[[sources.serial.ports]]\npath = "p"\ndevice = "m"\n', "sources.serial.ports"),
        ('[sources.ble.devices.m]\nmac = "AA:BB:CC:DD:EE:FF"\n', "sources.ble.devices.m"),
    ],
)
def test_a_modbus_device_id_listed_by_another_source_is_refused(
    tmp_path: Path, other: str, where: str
) -> None:
    msg = refused(tmp_path, other + device(REG.format(s="a", a=0, t="int16")))
    assert "[sources.modbus.devices[0].id]" in msg, msg
    assert f"'m' is also listed in {where}" in msg and "its own id" in msg, msg
