"""[sources.modbus]: buses, devices and register maps load into dataclasses, and every refusal
names the file and the key (overlapping ranges, a type that does not fit its count, an
address out of range, an unknown bus, a device id another source already lists...)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.devices.codecs.modbus import DataType, Order, Table
from agent.errors import ConfigError

BASE = '[gateway]\nkey_file = "gateway.key"\n[sources.mqtt]\nallowed_devices = ["dev-1"]\n'

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


def load_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + text, encoding="utf-8")
    return load_config(path)


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    return str(info.value)


def test_a_meter_on_a_bus_and_a_plc_over_tcp_load_with_their_maps(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + METER, encoding="utf-8")
    cfg = load_config(path).modbus
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
    path = tmp_path / "agent.toml"
    path.write_text(BASE, encoding="utf-8")
    assert load_config(path).modbus.devices == ()


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
    msg = refusal(tmp_path, "[sources.modbus]\n" + text)
    assert f"[{key}]" in msg and words in msg, msg


def test_an_rtu_unit_must_be_1_to_247(tmp_path: Path) -> None:
    bus = '[[sources.modbus.buses]]\nname = "b"\nport = "/dev/x"\n'
    msg = refusal(
        tmp_path,
        "[sources.modbus]\n"
        + bus
        + device(REG.format(s="a", a=0, t="int16"), 'id = "m"\nbus = "b"\nunit = 0\n'),
    )
    assert "[sources.modbus.devices[0].unit] must be between 1 and 247" in msg
