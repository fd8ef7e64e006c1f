"""The CBOR device frame: the same frames as JSON, strictly decoded (no trailing bytes, no
duplicate keys, bounded nesting, no floats), with exact decimal fractions (tag 4)."""

from __future__ import annotations

import contextlib
import json
import random
from typing import Any

import cbor2
import pytest

from agent.devices.codecs.cbor_frame import encode_cbor_frame, parse_cbor_frame
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.errors import FrameError


def cbor(obj: Any) -> bytes:
    return cbor2.dumps(obj)


def one(v: Any, **extra: Any) -> bytes:
    return cbor({"v": 1, "n": 1, "r": [{"s": "t", "v": v, "u": "Cel", **extra}]})


def test_cbor_and_json_forms_of_random_frames_parse_to_the_same_values() -> None:
    rng = random.Random(3)
    for _ in range(300):
        values = [
            (f"s{i}", rng.randint(-(2**80), 2**80), rng.randint(-20, 20), "Cel")
            for i in range(rng.randint(1, 16))
        ]
        n, ts = rng.randint(0, 2**64 - 1), rng.randint(0, 2**40)
        mac = rng.randbytes(32)
        a = parse_cbor_frame(encode_cbor_frame(n, values, device_id="d-1", timestamp=ts, mac=mac))
        b = parse_frame(encode_frame(n, values, device_id="d-1", timestamp=ts, mac=mac))
        assert (a.values, a.counter, a.timestamp, a.device_id, a.mac) == (
            b.values,
            b.counter,
            b.timestamp,
            b.device_id,
            b.mac,
        )


def test_decimal_fraction_tag_is_exact_even_past_28_digits() -> None:
    mant = 12345678901234567890123456789012345
    f = parse_cbor_frame(one(cbor2.CBORTag(4, [-30, mant])))
    assert (f.values[0].value, f.values[0].exponent) == (mant, -30)
    f = parse_cbor_frame(one("21.370"))
    assert (f.values[0].value, f.values[0].exponent) == (21370, -3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not_cbor"),
        (b"\xff", "not_cbor"),
        (cbor({"v": 1, "n": 1, "r": []}) + b"\x00", "not_cbor"),  # trailing bytes
        (b"\xa2\x61a\x01\x61a\x02", "not_cbor"),  # duplicate key
        (b"\x81" * 20 + b"\x00", "not_cbor"),  # nested deeper than 8
        (one(cbor2.CBORTag(5, [-1, 3])), "not_cbor"),  # bigfloat: binary, not exact
        (one(21.5), "bad_type"),  # float
        (one(float("nan")), "bad_type"),
        (cbor([1, 2]), "not_object"),
        (cbor({1: 1, "n": 1, "r": []}), "bad_type"),  # non-text key
        (cbor({"v": 1, "n": "1", "r": [{"s": "t", "v": 1, "u": "C"}]}), "bad_type"),
        (cbor({"v": 1, "n": 1, "r": [{"s": "t", "v": 1, "u": "C"}], "x": 1}), "unknown_field"),
        (cbor({"v": 1, "n": 1, "r": [{"s": "t", "v": 1, "u": "C"}], "mac": b"1" * 31}), "bad_type"),
        (cbor({"v": 1, "n": 2**64, "r": [{"s": "t", "v": 1, "u": "C"}]}), "out_of_range"),
        (b"\xa0" * 5000, "oversize"),
    ],
)
def test_malformed_cbor_frames_are_refused_with_a_stable_reason(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(FrameError) as err:
        parse_cbor_frame(payload)
    assert err.value.reason == reason


def test_random_bytes_never_escape_as_anything_but_frame_error() -> None:
    rng = random.Random(11)
    good = encode_cbor_frame(1, [("t", 1, 0, "Cel")])
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(FrameError):  # anything else escaping fails the test
            parse_cbor_frame(bytes(data))


def test_the_cbor_form_is_smaller_than_the_json_form() -> None:
    values = [("temperature", 2137, -2, "Cel"), ("humidity", 455, -1, "%")]
    assert len(encode_cbor_frame(9, values)) < len(json.dumps(json.loads(encode_frame(9, values))))
