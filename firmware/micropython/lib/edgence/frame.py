"""The device frame (docs/device-frame.md): compact JSON, its canonical bytes and the HMAC.

Pure: no I/O. HMAC-SHA256 is built on hashlib.sha256 alone (RFC 2104), since not every port
has an `hmac` module. The JSON is built by hand so that it is byte-identical to the agent's
`encode_frame` on every port (MicroPython's json.dumps spaces its separators).
"""

import hashlib

try:
    from binascii import hexlify
except ImportError:  # pragma: no cover - every port has binascii; kept for tiny builds
    hexlify = None

CANONICAL_PREFIX = b"EDGENCE-FRAME-1\n"
MAX_VALUES = 16
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
_BLOCK = 64
_UINT64_MAX = (1 << 64) - 1


class FrameError(ValueError):
    """A reading that cannot go into a frame (bad name, unit, number); says which field."""


def hex_of(data):
    if hexlify is not None:
        return hexlify(data).decode()
    return "".join("%02x" % b for b in data)


def check_name(text, what):
    if not isinstance(text, str) or not 1 <= len(text) <= 32:
        raise FrameError("%s must be 1-32 characters: %r" % (what, text))
    for c in text:
        if c not in _NAME_CHARS:
            raise FrameError("%s %r: only A-Z a-z 0-9 _ . : - allowed" % (what, text))
    return text


def check_unit(text):
    if not isinstance(text, str) or not 1 <= len(text) <= 32:
        raise FrameError("unit must be 1-32 characters: %r" % (text,))
    for c in text:
        if not 0x21 <= ord(c) <= 0x7E:
            raise FrameError("unit %r: printable ASCII without space only" % (text,))
    return text


def _check_int(n, lo, hi, what):
    # bool is an int subclass on CPython: a True value is a bug in a driver, not a reading.
    if not isinstance(n, int) or isinstance(n, bool) or not lo <= n <= hi:
        raise FrameError("%s must be an integer in %d..%d: %r" % (what, lo, hi, n))
    return n


def check_reading(reading):
    """reading: (sensor, value, exponent, unit) with an exact integer value."""
    s, v, e, u = reading
    check_name(s, "sensor name")
    _check_int(v, -(1 << 255), (1 << 255) - 1, "value of " + s)
    _check_int(e, -128, 127, "exponent of " + s)
    check_unit(u)
    return reading


def _json_str(text):
    # Names and units are printable ASCII (checked), so only '"' and '\\' need escaping;
    # json.dumps escapes exactly these two the same way.
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text + '"'


def canonical_bytes(device_id, counter, timestamp, readings):
    """What the MAC covers (docs/device-frame.md, "Authentication")."""
    parts = [device_id, "\n", str(counter), "\n"]
    if timestamp is not None:
        parts.append(str(timestamp))
    parts.append("\n")
    for s, v, e, u in readings:
        parts.append("%s\t%d\t%d\t%s\n" % (s, v, e, u))
    return CANONICAL_PREFIX + "".join(parts).encode()


def hmac_sha256(key, msg):
    """RFC 2104 HMAC with SHA-256 from hashlib.sha256 only."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(msg)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def check_frame(counter, readings, timestamp=None):
    """Raise FrameError unless the agent would accept these fields."""
    _check_int(counter, 0, _UINT64_MAX, "counter")
    if timestamp is not None:
        _check_int(timestamp, 0, _UINT64_MAX, "timestamp")
    if not 1 <= len(readings) <= MAX_VALUES:
        raise FrameError("a frame carries 1-%d readings, not %d" % (MAX_VALUES, len(readings)))
    seen = []
    for r in readings:
        check_reading(r)
        if r[0] in seen:
            raise FrameError("sensor %r twice in one frame" % (r[0],))
        seen.append(r[0])


def encode_frame(counter, readings, timestamp=None, mac=None, device_id=None):
    """The frame's JSON bytes, key order and separators as the agent's encode_frame."""
    check_frame(counter, readings, timestamp)
    out = ['{"v":1']
    if device_id is not None:
        out.append(',"id":' + _json_str(check_name(device_id, "device id")))
    out.append(',"n":%d' % counter)
    if timestamp is not None:
        out.append(',"ts":%d' % timestamp)
    out.append(',"r":[')
    for i, (s, v, e, u) in enumerate(readings):
        if i:
            out.append(",")
        out.append('{"s":%s,"v":%d,"e":%d,"u":%s}' % (_json_str(s), v, e, _json_str(u)))
    out.append("]")
    if mac is not None:
        out.append(',"mac":"' + hex_of(mac) + '"')
    out.append("}")
    return "".join(out).encode()


def encode_signed_frame(key, device_id, counter, readings, timestamp=None):
    """A frame with its `mac`, as the agent's encode_signed_frame builds it."""
    check_name(device_id, "device id")
    check_frame(counter, readings, timestamp)
    body = canonical_bytes(device_id, counter, timestamp, readings)
    return encode_frame(counter, readings, timestamp=timestamp, mac=hmac_sha256(key, body))
