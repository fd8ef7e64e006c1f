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


# 1 where a byte may appear in a name (A-Z a-z 0-9 _ . : -): one lookup per byte, no
# allocation per character.
_NAME_OK = bytes(1 if chr(i) in _NAME_CHARS else 0 for i in range(128))


def check_name(text, what):
    if isinstance(text, str) and 1 <= len(text) <= 32:
        for b in text.encode():
            if b > 127 or not _NAME_OK[b]:
                raise FrameError("%s %r: only A-Z a-z 0-9 _ . : - allowed" % (what, text))
        return text
    raise FrameError("%s must be 1-32 characters: %r" % (what, text))


def check_unit(text):
    if isinstance(text, str) and 1 <= len(text) <= 32:
        for b in text.encode():
            if not 0x21 <= b <= 0x7E:
                raise FrameError("unit %r: printable ASCII without space only" % (text,))
        return text
    raise FrameError("unit must be 1-32 characters: %r" % (text,))


def _check_int(n, lo, hi, what, name=""):
    # bool is an int subclass on CPython: a True value is a bug in a driver, not a reading.
    # The message is built only when raising (no string per reading on the hot path).
    if isinstance(n, int) and not isinstance(n, bool) and lo <= n <= hi:
        return n
    span = "-2^255..2^255-1" if hi == _VMAX else "%d..%d" % (lo, hi)
    raise FrameError("%s%s must be an integer in %s: %s" % (what, name, span, repr(n)[:24]))


_VMAX = (1 << 255) - 1
_VMIN = -(1 << 255)


def check_reading(reading):
    """reading: (sensor, value, exponent, unit) with an exact integer value."""
    s, v, e, u = reading
    check_name(s, "sensor name")
    _check_int(v, _VMIN, _VMAX, "value of ", s)
    _check_int(e, -128, 127, "exponent of ", s)
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
    text = "%s\n%d\n%s\n" % (device_id, counter, "" if timestamp is None else timestamp)
    for s, v, e, u in readings:
        text += "%s\t%d\t%d\t%s\n" % (s, v, e, u)
    return CANONICAL_PREFIX + text.encode()


_pads = [None, None, None]  # key, inner pad, outer pad: built once per key, not per frame


def _pads_for(key):
    if _pads[0] is not key and _pads[0] != key:
        k = key if len(key) <= _BLOCK else hashlib.sha256(key).digest()
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        for i in range(len(k)):
            ipad[i] = k[i]
            opad[i] = k[i]
        for i in range(_BLOCK):
            ipad[i] ^= 0x36
            opad[i] ^= 0x5C
        _pads[0], _pads[1], _pads[2] = key, bytes(ipad), bytes(opad)
    return _pads[1], _pads[2]


def hmac_sha256(key, msg):
    """RFC 2104 HMAC with SHA-256 from hashlib.sha256 only."""
    ipad, opad = _pads_for(key)
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def check_frame(counter, readings, timestamp=None):
    """Raise FrameError unless the agent would accept these fields."""
    _check_int(counter, 0, _UINT64_MAX, "counter")
    if timestamp is not None:
        _check_int(timestamp, 0, _UINT64_MAX, "timestamp")
    if not 1 <= len(readings) <= MAX_VALUES:
        raise FrameError("a frame carries 1-%d readings, not %d" % (MAX_VALUES, len(readings)))
    for i in range(len(readings)):
        r = readings[i]
        check_reading(r)
        for j in range(i):
            if readings[j][0] == r[0]:
                raise FrameError("sensor %r twice in one frame" % (r[0],))


def _body(counter, readings, timestamp, device_id):
    out = '{"v":1'
    if device_id is not None:
        out += ',"id":' + _json_str(device_id)
    out += ',"n":%d' % counter
    if timestamp is not None:
        out += ',"ts":%d' % timestamp
    out += ',"r":['
    first = True
    for s, v, e, u in readings:
        out += '%s{"s":%s,"v":%d,"e":%d,"u":%s}' % (
            "" if first else ",",
            _json_str(s),
            v,
            e,
            _json_str(u),
        )
        first = False
    return out + "]"


def encode_frame(counter, readings, timestamp=None, mac=None, device_id=None):
    """The frame's JSON bytes, key order and separators as the agent's encode_frame."""
    check_frame(counter, readings, timestamp)
    if device_id is not None:
        check_name(device_id, "device id")
    out = _body(counter, readings, timestamp, device_id)
    if mac is not None:
        out += ',"mac":"' + hex_of(mac) + '"'
    return (out + "}").encode()


# Hot path (one signed frame per reading): the JSON and the canonical text are each made by
# one %-format from a template cached per (number of readings, timestamp present), and the
# canonical text goes into the hash without being copied where the port's hashlib takes str.
_templates = {}
try:
    hashlib.sha256().update("")
    _HASH_STR = True  # MicroPython: str has the buffer protocol
except TypeError:
    _HASH_STR = False


def _templates_for(n, has_ts):
    t = _templates.get(n * 2 + has_ts)
    if t is None:
        canon = "%s\n%d\n" + ("%d" if has_ts else "") + "\n" + "%s\t%d\t%d\t%s\n" * n
        r = ",".join(['{"s":"%s","v":%d,"e":%d,"u":"%s"}'] * n)
        body = '{"v":1,"n":%d' + (',"ts":%d' if has_ts else "") + ',"r":[' + r + '],"mac":"%s"}'
        t = _templates[n * 2 + has_ts] = (canon, body)
    return t


def encode_signed_frame(key, device_id, counter, readings, timestamp=None):
    """A frame with its `mac`, as the agent's encode_signed_frame builds it. The fields are
    checked once; the MAC's pads are cached per key (frame.hmac_sha256)."""
    check_name(device_id, "device id")
    check_frame(counter, readings, timestamp)
    for r in readings:
        u = r[3]
        if '"' in u or "\\" in u:  # a unit that needs JSON escapes: the general path
            canon = canonical_bytes(device_id, counter, timestamp, readings)
            return encode_frame(counter, readings, timestamp, mac=hmac_sha256(key, canon))
    has_ts = timestamp is not None
    canon_t, body_t = _templates_for(len(readings), has_ts)
    args = [device_id, counter]
    if has_ts:
        args.append(timestamp)
    for r in readings:
        args.extend(r)
    ipad, opad = _pads_for(key)
    h = hashlib.sha256(ipad)
    h.update(CANONICAL_PREFIX)
    text = canon_t % tuple(args)
    h.update(text if _HASH_STR else text.encode())
    text = None
    outer = hashlib.sha256(opad)
    outer.update(h.digest())
    args[0] = hex_of(outer.digest())  # becomes the last argument below
    args.append(args.pop(0))
    return (body_t % tuple(args)).encode()
