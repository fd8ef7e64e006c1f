"""The canonical bytes of a frame and its HMAC, cross-checked against HMAC built by hand from
sha256 alone, as the MicroPython firmware builds it."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from agent.devices.auth import canonical_bytes, frame_mac, mac_matches
from agent.devices.codecs.frame import encode_frame, parse_frame

KEY = bytes(range(32))


def hmac_from_sha256(key: bytes, msg: bytes) -> bytes:
    """RFC 2104 with nothing but sha256, as firmware without an hmac module does it."""
    k = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k) + msg).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in k) + inner).digest()


def test_canonical_bytes_follow_the_documented_layout() -> None:
    frame = parse_frame(
        b'{"v":1,"n":42,"ts":1764000000,"r":[{"s":"temperature","v":2137,"e":-2,"u":"Cel"},'
        b'{"s":"humidity","v":"45.5","u":"%"}]}'
    )
    assert canonical_bytes("dev-1", frame) == (
        b"EDGENCE-FRAME-1\ndev-1\n42\n1764000000\n"
        b"temperature\t2137\t-2\tCel\nhumidity\t455\t-1\t%\n"
    )


def test_canonical_bytes_without_timestamp_keep_an_empty_line() -> None:
    frame = parse_frame(encode_frame(7, [("t", -5, 0, "Cel")]))
    assert canonical_bytes("a", frame) == b"EDGENCE-FRAME-1\na\n7\n\nt\t-5\t0\tCel\n"


def test_mac_equals_hmac_built_from_sha256_alone() -> None:
    frame = parse_frame(encode_frame(1, [("t", 1, 0, "Cel")], timestamp=5))
    expected = hmac_from_sha256(KEY, canonical_bytes("dev-1", frame))
    assert frame_mac(KEY, "dev-1", frame) == expected
    assert expected == hmac.new(KEY, canonical_bytes("dev-1", frame), "sha256").digest()


def signed(counter: int, value: int, device: str = "dev-1", ts: int | None = 9) -> bytes:
    values = [("t", value, -1, "Cel")]
    unsigned = parse_frame(encode_frame(counter, values, timestamp=ts))
    return encode_frame(counter, values, timestamp=ts, mac=frame_mac(KEY, device, unsigned))


def test_a_signed_frame_verifies_and_every_change_breaks_it() -> None:
    good = parse_frame(signed(5, 100))
    assert mac_matches(KEY, "dev-1", good)
    # another device's id, another key, a changed value, counter or timestamp: all fail
    assert not mac_matches(KEY, "dev-2", good)
    assert not mac_matches(bytes(32), "dev-1", good)
    mac = good.mac
    assert mac is not None
    for counter, value, ts in ((5, 101, 9), (6, 100, 9), (5, 100, 10), (5, 100, None)):
        tampered = parse_frame(
            encode_frame(counter, [("t", value, -1, "Cel")], timestamp=ts, mac=mac)
        )
        assert not mac_matches(KEY, "dev-1", tampered)


def test_a_frame_without_mac_does_not_verify() -> None:
    assert not mac_matches(KEY, "dev-1", parse_frame(encode_frame(1, [("t", 1, 0, "Cel")])))


def test_the_documented_example_mac() -> None:
    """The worked example of docs/device-frame.md, "Authentication"."""
    frame = parse_frame(
        b'{"v":1,"n":42,"ts":1764000000,"r":[{"s":"temperature","v":2137,"e":-2,"u":"Cel"}]}'
    )
    doc = (Path(__file__).parents[3] / "docs" / "device-frame.md").read_text()
    mac = frame_mac(KEY, "dev-1", frame).hex()
    assert mac == hmac_from_sha256(KEY, canonical_bytes("dev-1", frame)).hex()
    assert f"`mac` = `{mac}`" in doc
