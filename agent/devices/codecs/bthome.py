"""BTHome v2 (service data of UUID 0xFCD2): parse plain and AES-CCM encrypted adverts; build them.

Pure: no I/O. Values stay exact (raw integer times a decimal factor, never a float). Every
failure is a FrameError whose `reason` is a short, stable counter label.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from agent.devices.codecs.bthome_objects import (
    COMMAND_RESERVED,
    DIMMER_LEFT,
    DIMMER_RIGHT,
    OBJECT_TYPES,
)
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
