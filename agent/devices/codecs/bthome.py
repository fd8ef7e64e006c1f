"""BTHome v2 (service data of UUID 0xFCD2): parse plain and AES-CCM encrypted adverts; build them.

Pure: no I/O. Values stay exact (raw integer times a decimal factor, never a float). Every
failure is a FrameError whose `reason` is a short, stable counter label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from agent.errors import FrameError

BTHOME_UUID16 = 0xFCD2
BTHOME_SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
_UUID_LE = b"\xd2\xfc"
MIC_LEN = 4
COUNTER_LEN = 4

# Device-information byte: bit 0 encryption, bit 1 MAC included, bit 2 trigger based,
# bits 5-7 the BTHome version (2).
FLAG_ENCRYPTED = 0x01
FLAG_MAC_INCLUDED = 0x02
FLAG_TRIGGER_BASED = 0x04
VERSION = 2

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


@dataclass(frozen=True, slots=True)
class BTHomeValue:
    """One measurement, binary state or event. `name` is unique within its packet: the second
    temperature of a packet is `temperature_2` (repeated objects are numbered in order)."""

    name: str
    value: int
    exponent: int
    unit: str
    object_id: int


@dataclass(frozen=True, slots=True)
class BTHomePacket:
    """A decoded BTHome v2 advert. `counter` is set for encrypted adverts only (authenticated);
    `unknown_object_id` is the first id this decoder does not know: the spec orders objects by
    id, so everything before it was decoded and everything from it on is ignored."""

    encrypted: bool
    trigger_based: bool
    mac: bytes | None  # from the payload when MAC-included, natural order (AA:BB:... = aabb...)
    counter: int | None
    packet_id: int | None
    values: tuple[BTHomeValue, ...]
    timestamp: int | None = None
    texts: tuple[tuple[str, bytes], ...] = ()
    device_type_id: int | None = None
    firmware_version: int | None = None
    unknown_object_id: int | None = None
    settings_revision: int | None = None


def mac_bytes(address: str) -> bytes:
    """'54:48:E6:8F:80:A5' -> bytes 54 48 e6 8f 80 a5 (raises ValueError if not a MAC)."""
    raw = bytes.fromhex(address.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"{address!r} is not a 6-byte Bluetooth address")
    return raw


def _nonce(mac: bytes, device_info: int, counter: bytes) -> bytes:
    return mac + _UUID_LE + bytes((device_info,)) + counter


_CIPHERS: dict[bytes, AESCCM] = {}


def _ccm(bindkey: bytes) -> AESCCM:
    """AES-CCM with a 4-byte MIC, one per bindkey (setting up the key costs more than an advert)."""
    cipher = _CIPHERS.get(bindkey)
    if cipher is None:
        if len(bindkey) != 16:
            raise ValueError("a BTHome bindkey is 16 bytes")
        if len(_CIPHERS) >= 4096:  # bounded: one entry per device key
            _CIPHERS.clear()
        cipher = _CIPHERS[bindkey] = AESCCM(bindkey, tag_length=MIC_LEN)
    return cipher


def parse_bthome(
    service_data: bytes, *, mac: bytes | None = None, bindkey: bytes | None = None
) -> BTHomePacket:
    """Decode the service data of UUID 0xFCD2 (without the UUID). `mac` is the advertiser's
    address (needed for encrypted adverts that do not carry their MAC); `bindkey` the 16-byte
    AES key of an encrypted device. Raises FrameError(reason, detail)."""
    data = bytes(service_data)
    if not data:
        raise FrameError("short_payload", "empty BTHome service data")
    info = data[0]
    version = info >> 5
    if version != VERSION:
        raise FrameError("bad_version", f"BTHome version {version}; this agent speaks v2")
    pos = 1
    payload_mac: bytes | None = None
    if info & FLAG_MAC_INCLUDED:
        if len(data) < 7:
            raise FrameError("short_payload", "MAC-included flag set but fewer than 6 MAC bytes")
        payload_mac = data[6:0:-1]  # sent reversed (little-endian)
        pos = 7
    encrypted = bool(info & FLAG_ENCRYPTED)
    counter: int | None = None
    if encrypted:
        if bindkey is None:
            raise FrameError("no_bindkey", "encrypted BTHome advert and no bindkey for the device")
        nonce_mac = payload_mac or mac
        if nonce_mac is None:
            raise FrameError("no_mac", "encrypted advert without its MAC: the address is needed")
        body = data[pos:]
        if len(body) < 1 + COUNTER_LEN + MIC_LEN:
            raise FrameError("short_payload", f"{len(body)} encrypted bytes; at least 9 are needed")
        ctr = body[-8:-4]
        try:
            objects = _ccm(bindkey).decrypt(
                _nonce(nonce_mac, info, ctr), body[:-8] + body[-4:], None
            )
        except InvalidTag:
            raise FrameError(
                "bad_mic", "BTHome MIC does not verify (wrong bindkey, or forged/corrupt advert)"
            ) from None
        counter = int.from_bytes(ctr, "little")
    else:
        objects = data[pos:]
    return _decode_objects(
        objects, encrypted, bool(info & FLAG_TRIGGER_BASED), payload_mac, counter
    )


def _decode_objects(
    objects: bytes,
    encrypted: bool,
    trigger_based: bool,
    payload_mac: bytes | None,
    counter: int | None,
) -> BTHomePacket:
    values: list[BTHomeValue] = []
    seen: dict[str, int] = {}
    texts: list[tuple[str, bytes]] = []
    packet_id = timestamp = device_type = firmware = unknown = settings = None
    types = OBJECT_TYPES
    pos, end = 0, len(objects)
    while pos < end:
        oid = objects[pos]
        t = types.get(oid)
        if t is None:
            unknown = oid
            break
        pos += 1
        length = t.length
        if length == 0:  # text / raw / command: a length byte first
            if pos >= end:
                raise FrameError("truncated_object", f"object 0x{oid:02x} without its length")
            length = objects[pos]
            if t.kind == "command":
                if length & COMMAND_RESERVED:
                    # The reserved bits may one day change what the length means: the rest of
                    # the advert cannot be read safely, as after an unknown object.
                    unknown = oid
                    break
                length += 1  # the opcode, then `length` bytes of arguments
            pos += 1
        if pos + length > end:
            raise FrameError(
                "truncated_object",
                f"object 0x{oid:02x} needs {length} bytes, {end - pos} left",
            )
        chunk = objects[pos : pos + length]
        pos += length
        kind = t.kind
        if kind == "text" or kind == "raw":
            texts.append((t.name, chunk))
            continue
        if kind == "command":
            # The opcode is signed as the value; arguments are opcode- and maker-specific
            # bytes, kept like a raw object.
            n = seen.get(t.name, 0) + 1
            seen[t.name] = n
            name = t.name if n == 1 else f"{t.name}_{n}"
            values.append(BTHomeValue(name, chunk[0], 0, t.unit, oid))
            if len(chunk) > 1:
                texts.append((name, chunk[1:]))
            continue
        raw = int.from_bytes(chunk, "little", signed=t.signed)
        if kind == "packet_id":
            packet_id = raw
            continue
        if kind == "timestamp":
            timestamp = raw
            continue
        if kind == "device":
            if t.name == "device_type_id":
                device_type = raw
            elif t.name == "settings_revision":
                settings = raw
            else:
                firmware = raw
            continue
        if kind == "binary" and raw > 1:
            # The spec defines 0 and 1 only; Home Assistant reads any other byte as "on", a
            # bitmask reader as its lowest bit: the gateway signs neither guess.
            raise FrameError(
                "bad_binary", f"binary object 0x{oid:02x} is {raw}; BTHome defines 0 and 1 only"
            )
        elif kind == "dimmer":
            event, steps = chunk[0], chunk[1]
            raw = -steps if event == DIMMER_LEFT else steps if event == DIMMER_RIGHT else 0
        n = seen.get(t.name, 0) + 1
        seen[t.name] = n
        name = t.name if n == 1 else f"{t.name}_{n}"
        values.append(BTHomeValue(name, raw * t.multiplier, t.exponent, t.unit, oid))
    return BTHomePacket(
        encrypted=encrypted,
        trigger_based=trigger_based,
        mac=payload_mac,
        counter=counter,
        packet_id=packet_id,
        values=tuple(values),
        timestamp=timestamp,
        texts=tuple(texts),
        device_type_id=device_type,
        firmware_version=firmware,
        unknown_object_id=unknown,
        settings_revision=settings,
    )


def encode_objects(objects: list[tuple[int, int | bytes]]) -> bytes:
    """Object bytes for (object id, raw value) pairs in the given order: the raw value is the
    integer on the wire (21.37 Cel as object 0x02 is 2137), bytes for text and raw objects,
    opcode + argument bytes for a command, and `event | steps << 8` for the dimmer. The spec
    wants ids in ascending order; callers keep it."""
    out = bytearray()
    for oid, value in objects:
        t = OBJECT_TYPES.get(oid)
        if t is None:
            raise ValueError(f"unknown BTHome object id 0x{oid:02x}")
        out.append(oid)
        if t.kind == "command":
            if not isinstance(value, bytes) or not 1 <= len(value) <= 32:
                raise ValueError("a command is its opcode byte and at most 31 argument bytes")
            out.append(len(value) - 1)
            out += value
        elif t.length == 0:
            if not isinstance(value, bytes) or len(value) > 255:
                raise ValueError(f"object 0x{oid:02x} takes at most 255 bytes")
            out.append(len(value))
            out += value
        else:
            if isinstance(value, bytes):
                raise ValueError(f"object 0x{oid:02x} takes an integer")
            try:
                out += value.to_bytes(t.length, "little", signed=t.signed)
            except OverflowError:
                raise ValueError(
                    f"{value} does not fit object 0x{oid:02x} ({t.length} bytes)"
                ) from None
    return bytes(out)


def encode_bthome(
    objects: list[tuple[int, int | bytes]],
    *,
    mac: bytes | None = None,
    bindkey: bytes | None = None,
    counter: int | None = None,
    include_mac: bool = False,
    trigger_based: bool = False,
) -> bytes:
    """Service data (without the UUID) of a BTHome v2 advert; encrypted when `bindkey` is given
    (then `mac` and a 32-bit `counter` are required)."""
    info = VERSION << 5
    if trigger_based:
        info |= FLAG_TRIGGER_BASED
    if include_mac:
        if mac is None:
            raise ValueError("include_mac needs the mac")
        info |= FLAG_MAC_INCLUDED
    plain = encode_objects(objects)
    head = bytes((info,))
    if bindkey is not None:
        if mac is None or counter is None or not 0 <= counter < 2**32:
            raise ValueError("an encrypted advert needs the mac and a 32-bit counter")
        info |= FLAG_ENCRYPTED
        head = bytes((info,))
        ctr = counter.to_bytes(COUNTER_LEN, "little")
        sealed = _ccm(bindkey).encrypt(_nonce(mac, info, ctr), plain, None)
        body = sealed[:-MIC_LEN] + ctr + sealed[-MIC_LEN:]
    else:
        body = plain
    if include_mac:
        assert mac is not None
        head += mac[::-1]
    return head + body
