"""The firmware's device frame against the agent's own codec: the shared vectors
(tests/vectors/device_frames.json) are what the agent makes of a fixed list of inputs; the
firmware must produce the same bytes under CPython and under real MicroPython."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from edgence import frame

from agent.devices.auth import mac_matches
from agent.devices.codecs.frame import parse_frame
from tests.firmware.conftest import MP_TESTS
from tests.vectors import device_frames

VECTORS = json.loads(device_frames.PATH.read_text())["device_frames"]


def test_the_vector_file_is_what_the_agent_codec_makes_of_its_inputs() -> None:
    assert device_frames.PATH.read_text() == device_frames.render(), (
        "the agent's frame encoding changed: regenerate with python -m tests.vectors.device_frames"
    )


@pytest.mark.parametrize("v", VECTORS, ids=[f"{v['device_id']}-{v['counter']}" for v in VECTORS])
def test_firmware_on_cpython_matches_the_agent_byte_for_byte(v: dict[str, Any]) -> None:
    key = bytes.fromhex(v["key"])
    readings = [tuple(r) for r in v["readings"]]
    canon = frame.canonical_bytes(v["device_id"], v["counter"], v["timestamp"], readings)
    assert canon.decode() == v["canonical"]
    assert frame.hmac_sha256(key, canon).hex() == v["mac"]
    assert (
        frame.encode_frame(v["counter"], readings, timestamp=v["timestamp"]).decode()
        == (v["unsigned"])
    )
    signed = frame.encode_signed_frame(
        key, v["device_id"], v["counter"], readings, timestamp=v["timestamp"]
    )
    assert signed.decode() == v["signed"]
    assert mac_matches(key, v["device_id"], parse_frame(signed, max_values=16))


def test_firmware_under_micropython_matches_the_agent_byte_for_byte(
    micropython: Callable[..., Any],
) -> None:
    out = micropython(MP_TESTS / "mp_vectors.py", (device_frames.PATH, "/vectors.json"))
    assert out["implementation"] == "micropython"
    assert len(out["results"]) == len(VECTORS)
    for got, want in zip(out["results"], VECTORS, strict=True):
        for field in ("unsigned", "canonical", "mac", "signed"):
            assert got[field] == want[field], (want["device_id"], want["counter"], field)


def test_a_frame_for_another_device_does_not_verify() -> None:
    key = bytes(range(32))
    signed = frame.encode_signed_frame(key, "dev-1", 1, [("t", 1, 0, "Cel")])
    assert not mac_matches(key, "dev-2", parse_frame(signed))


@pytest.mark.parametrize(
    ("counter", "readings", "message"),
    [
        (-1, [("t", 1, 0, "Cel")], "counter"),
        (2**64, [("t", 1, 0, "Cel")], "counter"),
        (1, [], "1-16 readings"),
        (1, [("t", 1, 0, "Cel")] * 2, "twice"),
        (1, [("bad name", 1, 0, "Cel")], "sensor name"),
        (1, [("t", 1, 0, "two words")], "unit"),
        (1, [("t", 1, 128, "Cel")], "exponent"),
        (1, [("t", True, 0, "Cel")], "value of t"),
        (1, [("t", 1.5, 0, "Cel")], "value of t"),
        (1, [(f"s{i}", i, 0, "V") for i in range(17)], "1-16 readings"),
    ],
)
def test_the_firmware_refuses_what_the_agent_would_refuse(
    counter: int, readings: list[Any], message: str
) -> None:
    with pytest.raises(frame.FrameError, match=message):
        frame.encode_signed_frame(bytes(32), "dev-1", counter, readings)
