"""Cross-check vectors for the device frame: a fixed list of inputs, and what the agent's own
codec (encode_frame, canonical_bytes, frame_mac) makes of them. The firmware must produce the
same bytes under CPython and under real MicroPython (tests/firmware/).

Regenerate after a deliberate change of the frame: python -m tests.vectors.device_frames
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.devices.auth import canonical_bytes, encode_signed_frame, frame_mac
from agent.devices.codecs.frame import encode_frame, parse_frame

PATH = Path(__file__).with_name("device_frames.json")

Values = list[tuple[str, int, int, str]]

# (device id, key, counter, timestamp, readings): edges of every field the frame carries.
INPUTS: list[tuple[str, bytes, int, int | None, Values]] = [
    ("dev-1", bytes(range(32)), 42, 1764000000, [("temperature", 2137, -2, "Cel")]),
    ("dev-1", bytes(range(32)), 0, None, [("t", 0, 0, "Cel")]),
    (
        "pico-w.01:a_b",
        bytes([0xFF] * 32),
        2**64 - 1,
        2**64 - 1,
        [("humidity", 4550, -2, "%"), ("pressure", 101325, -2, "hPa"), ("co2", 415, 0, "[ppm]")],
    ),
    ("x", b"\x00" * 31 + b"\x01", 7, 0, [("neg", -2730, -1, "Cel"), ("zero-e", -1, 3, "m/s")]),
    ("esp32-9", bytes(range(100, 132)), 123456789, 1, [("big", 2**255 - 1, 127, "1")]),
    ("esp32-9", bytes(range(100, 132)), 123456790, 1, [("small", -(2**255), -128, "1")]),
    ("q", bytes(range(32)), 5, 99, [("quote", 1, 0, 'a"b\\c')]),
    (
        "many",
        bytes(range(1, 33)),
        65536,
        1700000000,
        [(f"s{i:02d}", i * 1000 - 8000, -(i % 4), "V") for i in range(16)],
    ),
]


def vector(device_id: str, key: bytes, counter: int, ts: int | None, values: Values) -> Any:
    unsigned = encode_frame(counter, values, timestamp=ts)
    parsed = parse_frame(unsigned, max_values=16)
    return {
        "device_id": device_id,
        "key": key.hex(),
        "counter": counter,
        "timestamp": ts,
        "readings": [list(v) for v in values],
        "unsigned": unsigned.decode(),
        "canonical": canonical_bytes(device_id, parsed).decode(),
        "mac": frame_mac(key, device_id, parsed).hex(),
        "signed": encode_signed_frame(key, device_id, counter, values, timestamp=ts).decode(),
    }


def build() -> list[Any]:
    return [vector(*i) for i in INPUTS]


def render() -> str:
    # Integers beyond 2^53 stay exact in Python's and MicroPython's JSON alike.
    return json.dumps({"device_frames": build()}, indent=1) + "\n"


if __name__ == "__main__":
    PATH.write_text(render())
    print(f"wrote {PATH}")
