"""Frame authentication of enrolled devices: the canonical bytes a frame's HMAC covers.

Pure: no I/O. The canonical form is simple enough for a microcontroller to build with string
formatting and `hashlib.sha256` (docs/device-frame.md, "Authentication").
"""

from __future__ import annotations

import hmac

from agent.frame import DeviceFrame

KEY_BYTES = 32
CANONICAL_PREFIX = b"EDGENCE-FRAME-1\n"


def canonical_bytes(device_id: str, frame: DeviceFrame) -> bytes:
    """What the HMAC covers: the device id the frame arrived under (topic, CoAP path, serial
    config), its counter, timestamp and every value exactly as parsed, one field per line.

        EDGENCE-FRAME-1\\n<device-id>\\n<n>\\n<ts or empty>\\n
        <s>\\t<value>\\t<exponent>\\t<unit>\\n   (one line per reading, in frame order)
    """
    ts = "" if frame.timestamp is None else str(frame.timestamp)
    head = f"{device_id}\n{frame.counter}\n{ts}\n"
    body = "".join(f"{v.sensor}\t{v.value}\t{v.exponent}\t{v.unit}\n" for v in frame.values)
    # Names, units and numbers are ASCII (the parser enforces it), so this encoding is exact.
    return CANONICAL_PREFIX + (head + body).encode("ascii")


def frame_mac(key: bytes, device_id: str, frame: DeviceFrame) -> bytes:
    """HMAC-SHA256 (RFC 2104) of the canonical bytes under the device's 32-byte key."""
    # hmac.digest: OpenSSL's one-shot HMAC, several times faster than hmac.new(...).digest()
    return hmac.digest(key, canonical_bytes(device_id, frame), "sha256")


def mac_matches(key: bytes, device_id: str, frame: DeviceFrame) -> bool:
    """True when the frame carries a MAC and it verifies (constant-time comparison)."""
    if frame.mac is None:
        return False
    return hmac.compare_digest(frame_mac(key, device_id, frame), frame.mac)


def encode_signed_frame(
    key: bytes,
    device_id: str,
    counter: int,
    values: list[tuple[str, int, int, str]],
    *,
    timestamp: int | None = None,
) -> bytes:
    """A frame with its `mac`, as an enrolled device sends it (simulator, tests, benchmarks)."""
    from agent.devices.codecs.frame import encode_frame, parse_frame

    unsigned = parse_frame(encode_frame(counter, values, timestamp=timestamp), max_values=256)
    mac = frame_mac(key, device_id, unsigned)
    return encode_frame(counter, values, timestamp=timestamp, mac=mac)
