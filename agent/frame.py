"""The device frame's model (DeviceFrame) and its validator, below the sources and the pipeline.

Pure: no I/O. The codecs (devices/codecs/frame.py for JSON, cbor_frame.py for CBOR) decode bytes
and hand the object to `frame_from_object`; sources and the pipeline import DeviceFrame from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from agent.errors import FrameError
from agent.model import (
    INT256_MAX,
    INT256_MIN,
    NAME_RE,
    UINT64_MAX,
    UNIT_RE,
    AuthMethod,
    Reading,
    Transport,
)

FRAME_VERSION = 1
DEFAULT_MAX_VALUES = 16
DEFAULT_MAX_BYTES = 4096
_FRAME_KEYS = frozenset({"v", "id", "n", "ts", "r", "mac"})
_VALUE_KEYS = frozenset({"s", "v", "e", "u"})
# Plain ASCII decimal text only (Decimal() alone also takes "1_000", " 12 ", Arabic digits).
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\Z")
_MAC_TEXT = re.compile(r"[0-9a-fA-F]{64}\Z")


@dataclass(frozen=True, slots=True)
class SensorValue:
    sensor: str
    value: int
    exponent: int
    unit: str


@dataclass(frozen=True, slots=True)
class DeviceFrame:
    """A parsed frame. `device_id` is None when the frame relies on its topic or path."""

    device_id: str | None
    counter: int
    timestamp: int | None
    values: tuple[SensorValue, ...]
    mac: bytes | None
    raw: bytes

    def readings(
        self, device_id: str, transport: Transport, auth: AuthMethod, now: int
    ) -> list[Reading]:
        ts = self.timestamp if self.timestamp is not None else now
        return [
            Reading(
                device_id=device_id,
                sensor=v.sensor,
                value=v.value,
                exponent=v.exponent,
                unit=v.unit,
                timestamp=ts,
                counter=self.counter,
                transport=transport,
                auth=auth,
            )
            for v in self.values
        ]


def _uint64(obj: dict[str, Any], key: str, where: str) -> int:
    v = obj[key]
    if type(v) is not int:
        raise FrameError("bad_type", f"{where}{key} must be an integer, got {type(v).__name__}")
    if not 0 <= v <= UINT64_MAX:
        raise FrameError("out_of_range", f"{where}{key}={v} is outside uint64")
    return v


def _exact_value(raw: Any, exponent: Any, where: str) -> tuple[int, int]:
    """(value, exponent) from an integer plus optional exponent, or an exact decimal."""
    if exponent is not None and (type(exponent) is not int):
        raise FrameError("bad_type", f"{where}e must be an integer")
    if type(raw) is int:
        value, exp = raw, (exponent if exponent is not None else 0)
    elif isinstance(raw, Decimal | str):
        if exponent is not None:
            raise FrameError("bad_type", f"{where}e is only allowed with an integer v")
        if isinstance(raw, str):
            if len(raw) > 100:
                raise FrameError("out_of_range", f"{where}v has more than 100 characters")
            if raw.lstrip("+-").lower() in ("nan", "snan", "inf", "infinity"):
                raise FrameError("not_finite", f"{where}v is not a finite number")
            if not _DECIMAL_TEXT.match(raw):
                raise FrameError("bad_type", f"{where}v {raw[:40]!r} is not a decimal number")
            try:
                raw = Decimal(raw)
            except InvalidOperation:
                raise FrameError("bad_type", f"{where}v {raw!r} is not a decimal number") from None
        if not raw.is_finite():
            raise FrameError("not_finite", f"{where}v is not a finite number")
        sign, digits, dexp = raw.as_tuple()
        assert isinstance(dexp, int)
        value = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        exp = dexp
    else:
        raise FrameError("bad_type", f"{where}v must be a number or a decimal string")
    if not INT256_MIN <= value <= INT256_MAX:
        raise FrameError("out_of_range", f"{where}v does not fit int256")
    if not -128 <= exp <= 127:
        raise FrameError("out_of_range", f"{where}exponent {exp} does not fit int8")
    return value, exp


def _label(obj: dict[str, Any], key: str, where: str, unit: bool = False) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise FrameError("bad_type", f"{where}{key} must be a string")
    if not (UNIT_RE if unit else NAME_RE).match(v):
        allowed = "printable ASCII, no space" if unit else "A-Z a-z 0-9 _ . : -"
        raise FrameError("bad_label", f"{where}{key}={v[:40]!r} must be 1-32 chars of {allowed}")
    return v


def frame_from_object(obj: Any, payload: bytes, *, max_values: int) -> DeviceFrame:
    """Validate a decoded frame (from JSON, or from CBOR via cbor_frame) into a DeviceFrame."""
    if not isinstance(obj, dict):
        raise FrameError("not_object", "a frame is a JSON object")
    for key in ("v", "n", "r"):
        if key not in obj:
            raise FrameError("missing_field", f"field {key!r} is required")
    unknown = obj.keys() - _FRAME_KEYS
    if unknown:
        raise FrameError("unknown_field", f"unknown field(s) {sorted(unknown)[:3]}")
    if obj["v"] != FRAME_VERSION or type(obj["v"]) is not int:
        raise FrameError("bad_version", f"frame version {obj['v']!r}; this agent speaks v=1")
    counter = _uint64(obj, "n", "")
    timestamp = _uint64(obj, "ts", "") if "ts" in obj else None
    device_id = _label(obj, "id", "") if "id" in obj else None
    mac: bytes | None = None
    if "mac" in obj:
        m = obj["mac"]
        if isinstance(m, bytes) and len(m) == 32:  # CBOR carries it as a byte string
            mac = m
        elif not isinstance(m, str) or not _MAC_TEXT.match(m):
            raise FrameError("bad_type", "mac must be 64 hex characters")
        else:
            mac = bytes.fromhex(m)
    entries = obj["r"]
    if not isinstance(entries, list) or not entries:
        raise FrameError("bad_type", "r must be a non-empty list of readings")
    if len(entries) > max_values:
        raise FrameError("too_many_values", f"{len(entries)} readings, at most {max_values}")
    values = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"r[{i}]."
        if not isinstance(entry, dict):
            raise FrameError("bad_type", f"r[{i}] must be an object")
        for key in ("s", "v", "u"):
            if key not in entry:
                raise FrameError("missing_field", f"field {where}{key} is required")
        if entry.keys() - _VALUE_KEYS:
            raise FrameError("unknown_field", f"unknown field(s) in r[{i}]")
        sensor = _label(entry, "s", where)
        if sensor in seen:
            raise FrameError("duplicate_sensor", f"sensor {sensor!r} appears twice")
        seen.add(sensor)
        value, exponent = _exact_value(entry["v"], entry.get("e"), where)
        values.append(SensorValue(sensor, value, exponent, _label(entry, "u", where, unit=True)))
    return DeviceFrame(device_id, counter, timestamp, tuple(values), mac, payload)


@dataclass(frozen=True, slots=True)
class Violation:
    """One rule a frame breaks: `reason` is the counter label, `detail` what to compare."""

    reason: str
    detail: str


def counter_key(device_id: str, transport: Transport | str, auth: AuthMethod) -> str:
    """Under which key a device's last counter is kept (in the pipeline and the journal).

    An enrolled device (HMAC or BTHome key) has one counter under its id: its key binds it to
    the one transport it was paired for. Any other device (allowlisted, observed, OSCORE, bound
    to a port, plaintext BLE, Modbus) has one counter per transport, `mqtt/dev-1`, so a spoofed
    frame on one transport (counter 2^64-1) cannot make the device's frames on another replays.
    `/` is in no device id, so the two kinds of key never meet."""
    if auth is AuthMethod.HMAC or auth is AuthMethod.BTHOME:
        return device_id
    return f"{transport}/{device_id}"
