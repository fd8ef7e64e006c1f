"""The BTHome v2 object ids: each one's name, size, kind and exact factor, and the event codes
of the button, dimmer and command objects. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal[
    "sensor",
    "binary",
    "button",
    "command",
    "dimmer",
    "packet_id",
    "timestamp",
    "text",
    "raw",
    "device",
]


@dataclass(frozen=True, slots=True)
class ObjectType:
    """One object id of the BTHome v2 format: its name, size and exact factor.

    The factor is `multiplier * 10**exponent` (0.35 is 35e-2), so a value is never a float.
    `length` 0 means the object carries its own length byte (text, raw); the command object
    (0x3B) has its own layout: a length byte (low 5 bits), an opcode, the arguments.
    """

    object_id: int
    name: str
    kind: Kind
    length: int
    signed: bool = False
    multiplier: int = 1
    exponent: int = 0
    unit: str = "1"


def _s(oid: int, name: str, length: int, exp: int, unit: str, signed: bool = False) -> ObjectType:
    return ObjectType(oid, name, "sensor", length, signed, 1, exp, unit)


def _b(oid: int, name: str) -> ObjectType:
    return ObjectType(oid, name, "binary", 1, unit="{bool}")


# Units are UCUM codes, as everywhere in the agent ("Cel", "%", "hPa", "[ppm]").
OBJECT_TYPES: dict[int, ObjectType] = {
    t.object_id: t
    for t in (
        ObjectType(0x00, "packet_id", "packet_id", 1),
        _s(0x01, "battery", 1, 0, "%"),
        _s(0x02, "temperature", 2, -2, "Cel", signed=True),
        _s(0x03, "humidity", 2, -2, "%"),
        _s(0x04, "pressure", 3, -2, "hPa"),
        _s(0x05, "illuminance", 3, -2, "lx"),
        _s(0x06, "mass", 2, -2, "kg"),
        _s(0x07, "mass_lb", 2, -2, "[lb_av]"),
        _s(0x08, "dewpoint", 2, -2, "Cel", signed=True),
        _s(0x09, "count", 1, 0, "1"),
        _s(0x0A, "energy", 3, -3, "kW.h"),
        _s(0x0B, "power", 3, -2, "W"),
        _s(0x0C, "voltage", 2, -3, "V"),
        _s(0x0D, "pm2_5", 2, 0, "ug/m3"),
        _s(0x0E, "pm10", 2, 0, "ug/m3"),
        _b(0x0F, "generic_boolean"),
        _b(0x10, "power_state"),
        _b(0x11, "opening"),
        _s(0x12, "co2", 2, 0, "[ppm]"),
        _s(0x13, "tvoc", 2, 0, "ug/m3"),
        _s(0x14, "moisture", 2, -2, "%"),
        _b(0x15, "battery_low"),
        _b(0x16, "battery_charging"),
        _b(0x17, "carbon_monoxide"),
        _b(0x18, "cold"),
        _b(0x19, "connectivity"),
        _b(0x1A, "door"),
        _b(0x1B, "garage_door"),
        _b(0x1C, "gas_detected"),
        _b(0x1D, "heat"),
        _b(0x1E, "light"),
        _b(0x1F, "lock"),
        _b(0x20, "moisture_detected"),
        _b(0x21, "motion"),
        _b(0x22, "moving"),
        _b(0x23, "occupancy"),
        _b(0x24, "plug"),
        _b(0x25, "presence"),
        _b(0x26, "problem"),
        _b(0x27, "running"),
        _b(0x28, "safety"),
        _b(0x29, "smoke"),
        _b(0x2A, "sound"),
        _b(0x2B, "tamper"),
        _b(0x2C, "vibration"),
        _b(0x2D, "window"),
        _s(0x2E, "humidity", 1, 0, "%"),
        _s(0x2F, "moisture", 1, 0, "%"),
        ObjectType(0x3A, "button", "button", 1, unit="{event}"),
        ObjectType(0x3B, "command", "command", 0, unit="{command}"),
        ObjectType(0x3C, "dimmer", "dimmer", 2, unit="{step}"),
        _s(0x3D, "count", 2, 0, "1"),
        _s(0x3E, "count", 4, 0, "1"),
        _s(0x3F, "rotation", 2, -1, "deg", signed=True),
        _s(0x40, "distance", 2, 0, "mm"),
        _s(0x41, "distance", 2, -1, "m"),
        _s(0x42, "duration", 3, -3, "s"),
        _s(0x43, "current", 2, -3, "A"),
        _s(0x44, "speed", 2, -2, "m/s"),
        _s(0x45, "temperature", 2, -1, "Cel", signed=True),
        _s(0x46, "uv_index", 1, -1, "1"),
        _s(0x47, "volume", 2, -1, "L"),
        _s(0x48, "volume", 2, 0, "mL"),
        _s(0x49, "volume_flow_rate", 2, -3, "m3/h"),
        _s(0x4A, "voltage", 2, -1, "V"),
        _s(0x4B, "gas", 3, -3, "m3"),
        _s(0x4C, "gas", 4, -3, "m3"),
        _s(0x4D, "energy", 4, -3, "kW.h"),
        _s(0x4E, "volume", 4, -3, "L"),
        _s(0x4F, "water", 4, -3, "L"),
        ObjectType(0x50, "timestamp", "timestamp", 4, unit="s"),
        _s(0x51, "acceleration", 2, -3, "m/s2"),
        _s(0x52, "gyroscope", 2, -3, "deg/s"),
        ObjectType(0x53, "text", "text", 0),
        ObjectType(0x54, "raw", "raw", 0),
        _s(0x55, "volume_storage", 4, -3, "L"),
        _s(0x56, "conductivity", 2, 0, "uS/cm"),
        _s(0x57, "temperature", 1, 0, "Cel", signed=True),
        ObjectType(0x58, "temperature", "sensor", 1, True, 35, -2, "Cel"),
        _s(0x59, "count", 1, 0, "1", signed=True),
        _s(0x5A, "count", 2, 0, "1", signed=True),
        _s(0x5B, "count", 4, 0, "1", signed=True),
        _s(0x5C, "power", 4, -2, "W", signed=True),
        _s(0x5D, "current", 2, -3, "A", signed=True),
        _s(0x5E, "direction", 2, -2, "deg"),
        _s(0x5F, "precipitation", 2, -1, "mm"),
        _s(0x60, "channel", 1, 0, "1"),
        _s(0x61, "rotational_speed", 2, 0, "/min"),
        _s(0x62, "speed", 4, -6, "m/s", signed=True),
        _s(0x63, "acceleration", 4, -6, "m/s2", signed=True),
        _s(0x64, "light_level", 1, 0, "1"),
        ObjectType(0x65, "settings_revision", "device", 1),
        ObjectType(0xF0, "device_type_id", "device", 2),
        ObjectType(0xF1, "firmware_version", "device", 4),
        ObjectType(0xF2, "firmware_version", "device", 3),
    )
}

BUTTON_EVENTS = {
    0x00: "none",
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}
DIMMER_NONE, DIMMER_LEFT, DIMMER_RIGHT = 0x00, 0x01, 0x02
COMMAND_OFF, COMMAND_ON, COMMAND_TOGGLE, COMMAND_STEP_UP, COMMAND_STEP_DOWN = range(5)
COMMAND_RESERVED = 0xE0  # high 3 bits of the command's length byte: reserved, sent as 0
