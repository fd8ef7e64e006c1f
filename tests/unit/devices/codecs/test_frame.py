"""The JSON device frame parser: exact decimals, one stable FrameError reason per failure, and
encode_frame -> parse_frame round trips (a seeded random loop: hypothesis is not installed)."""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
from typing import Any

import pytest

from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.errors import FrameError
from agent.frame import DEFAULT_MAX_BYTES, DEFAULT_MAX_VALUES, DeviceFrame, SensorValue
from agent.model import INT256_MAX, INT256_MIN, UINT64_MAX, AuthMethod, Transport

NAME_CHARS = string.ascii_letters + string.digits + "_.:-"
UNIT_CHARS = "".join(chr(c) for c in range(0x21, 0x7F))  # printable ASCII without space


def frame_json(**fields: Any) -> bytes:
    """A valid one-value frame with `fields` replacing (or, as None, removing) top-level keys."""
    obj: dict[str, Any] = {"v": 1, "n": 1, "r": [{"s": "t", "v": 1, "u": "Cel"}]}
    for key, value in fields.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj).encode()


def value_json(**fields: Any) -> bytes:
    """A valid frame whose single entry has `fields` replacing (or, as None, removing) keys."""
    entry: dict[str, Any] = {"s": "t", "v": 1, "u": "Cel"}
    for key, value in fields.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return frame_json(r=[entry])


def raw_value(v: str, extra: str = "") -> bytes:
    """A frame whose value is the literal JSON text `v` (numbers that json.dumps cannot write)."""
    return ('{"v":1,"n":1,"r":[{"s":"t","v":' + v + extra + ',"u":"Cel"}]}').encode()


def only_value(payload: bytes) -> tuple[int, int]:
    frame = parse_frame(payload)
    assert len(frame.values) == 1
    return frame.values[0].value, frame.values[0].exponent


def reason_of(payload: bytes, **kwargs: int) -> str:
    with pytest.raises(FrameError) as info:
        parse_frame(payload, **kwargs)
    return info.value.reason


# --- exact decimals -------------------------------------------------------------------------


def test_json_decimal_number_keeps_its_written_digits_and_scale() -> None:
    assert only_value(raw_value("21.370")) == (21370, -3)


def test_json_decimal_with_more_digits_than_a_double_is_kept_exactly() -> None:
    # 0.1 as a double is 0.1000000000000000055511151231257827...; a float path would show it.
    assert only_value(raw_value("0.10000000000000000000000000000000000001")) == (
        10000000000000000000000000000000000001,
        -38,
    )


def test_decimal_string_with_exponent_gives_value_and_exponent() -> None:
    assert only_value(value_json(v="-1e3")) == (-1, 3)


def test_json_number_in_exponent_notation_gives_value_and_exponent() -> None:
    assert only_value(raw_value("1E+2")) == (1, 2)
    assert only_value(raw_value("-2.5e-3")) == (-25, -4)


def test_integer_with_explicit_exponent_is_taken_as_is() -> None:
    assert only_value(value_json(v=2137, e=-2)) == (2137, -2)
    assert only_value(value_json(v=-5, e=4)) == (-5, 4)


def test_integer_without_exponent_has_exponent_zero() -> None:
    assert only_value(value_json(v=42)) == (42, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("-0", (0, 0)), ("-0.0", (0, -1)), ('"-0"', (0, 0)), ('"-0.00"', (0, -2))],
)
def test_negative_zero_becomes_plain_zero(text: str, expected: tuple[int, int]) -> None:
    value, exponent = only_value(raw_value(text))
    assert (value, exponent) == expected
    frame = parse_frame(raw_value(text))
    (reading,) = frame.readings("d", Transport.MQTT, AuthMethod.ALLOWLIST, now=1)
    assert not reading.decimal.startswith("-")


@pytest.mark.parametrize("v", [INT256_MAX, INT256_MIN, 2**200 + 1, -(2**254) - 7])
def test_very_large_integers_within_int256_are_exact(v: int) -> None:
    assert only_value(value_json(v=v)) == (v, 0)


def test_very_large_decimal_string_within_int256_is_exact() -> None:
    text = str(INT256_MAX)[:-2] + "." + str(INT256_MAX)[-2:]
    assert only_value(value_json(v=text)) == (INT256_MAX, -2)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (raw_value('"1e-128"'), (1, -128)),
        (raw_value('"1e127"'), (1, 127)),
        (raw_value("1", ',"e":-128'), (1, -128)),
        (raw_value("1", ',"e":127'), (1, 127)),
    ],
)
def test_exponent_at_the_int8_bounds_is_accepted(payload: bytes, expected: tuple[int, int]) -> None:
    assert only_value(payload) == expected


# --- every FrameError reason ----------------------------------------------------------------


def test_payload_over_max_bytes_is_oversize_and_at_max_bytes_is_accepted() -> None:
    payload = frame_json()
    assert parse_frame(payload, max_bytes=len(payload)).counter == 1
    assert reason_of(payload, max_bytes=len(payload) - 1) == "oversize"
    assert reason_of(b" " * (DEFAULT_MAX_BYTES + 1)) == "oversize"


def test_invalid_utf8_is_not_utf8() -> None:
    assert reason_of(b'{"v":1,"n":1,"r":[{"s":"\xff","v":1,"u":"Cel"}]}') == "not_utf8"


@pytest.mark.parametrize("payload", [b"", b"{", b"{'v':1}", b'{"v":1,}', b"nope"])
def test_text_that_is_not_json_is_not_json(payload: bytes) -> None:
    assert reason_of(payload) == "not_json"


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"frame"', b"null", b"true"])
def test_json_that_is_not_an_object_is_not_object(payload: bytes) -> None:
    assert reason_of(payload) == "not_object"


@pytest.mark.parametrize(
    "payload",
    [
        frame_json(v=None),
        frame_json(n=None),
        frame_json(r=None),
        value_json(s=None),
        value_json(v=None),
        value_json(u=None),
    ],
    ids=["v", "n", "r", "r.s", "r.v", "r.u"],
)
def test_missing_required_field_is_missing_field(payload: bytes) -> None:
    assert reason_of(payload) == "missing_field"


@pytest.mark.parametrize("payload", [frame_json(extra=1), value_json(x=1)], ids=["frame", "value"])
def test_field_outside_the_schema_is_unknown_field(payload: bytes) -> None:
    assert reason_of(payload) == "unknown_field"


@pytest.mark.parametrize(
    "payload",
    [
        frame_json(v=0),
        frame_json(v=2),
        frame_json(v=True),
        frame_json(v="1"),
        frame_json(v=1.0),
        b'{"v":null,"n":1,"r":[{"s":"t","v":1,"u":"Cel"}]}',
    ],
    ids=["0", "2", "true", "string", "1.0", "null"],
)
def test_version_other_than_integer_one_is_bad_version(payload: bytes) -> None:
    assert reason_of(payload) == "bad_version"


@pytest.mark.parametrize(
    "payload",
    [
        frame_json(n=1.5),
        frame_json(n=1.0),
        frame_json(n="1"),
        frame_json(n=True),
        frame_json(ts="1700000000"),
        value_json(v=True),
        value_json(v=[1]),
        value_json(v={"m": 1}),
        value_json(v="twenty"),
        value_json(v=1, e=1.0),
        value_json(v=1, e=True),
        value_json(v="1.5", e=1),
        value_json(s=5),
        value_json(u=["C"]),
        frame_json(r=[]),
        frame_json(r={"s": "t"}),
        frame_json(r=["t"]),
        frame_json(mac="zz" * 32),
        frame_json(mac="00" * 31),
        frame_json(mac="00" * 33),
        frame_json(mac=123),
    ],
    ids=[
        "counter-float",
        "counter-float-integral",
        "counter-str",
        "counter-bool",
        "ts-str",
        "value-bool",
        "value-list",
        "value-object",
        "value-not-decimal",
        "exponent-float",
        "exponent-bool",
        "exponent-with-decimal",
        "sensor-int",
        "unit-list",
        "r-empty",
        "r-object",
        "r-entry-not-object",
        "mac-not-hex",
        "mac-short",
        "mac-long",
        "mac-int",
    ],
)
def test_wrong_json_type_is_bad_type(payload: bytes) -> None:
    assert reason_of(payload) == "bad_type"


@pytest.mark.parametrize(
    "payload",
    [
        raw_value("NaN"),
        raw_value("Infinity"),
        raw_value("-Infinity"),
        value_json(v="NaN"),
        value_json(v="Infinity"),
        value_json(v="-inf"),
        value_json(v="sNaN"),
        frame_json().replace(b'"n": 1', b'"n": NaN'),
    ],
    ids=["NaN", "Infinity", "-Infinity", '"NaN"', '"Infinity"', '"-inf"', '"sNaN"', "counter-NaN"],
)
def test_nan_and_infinity_are_not_finite(payload: bytes) -> None:
    assert reason_of(payload) == "not_finite"


@pytest.mark.parametrize(
    "payload",
    [
        frame_json(n=UINT64_MAX + 1),
        frame_json(n=-1),
        frame_json(ts=UINT64_MAX + 1),
        frame_json(ts=-1),
        value_json(v="1e-129"),
        value_json(v="1e128"),
        value_json(v=1, e=128),
        value_json(v=1, e=-129),
        value_json(v=INT256_MAX + 1),
        value_json(v=INT256_MIN - 1),
        value_json(v=str(INT256_MAX + 1)),
        value_json(v="1" * 101),
    ],
    ids=[
        "counter>uint64",
        "counter<0",
        "ts>uint64",
        "ts<0",
        "exponent<int8",
        "exponent>int8",
        "e>int8",
        "e<int8",
        "value>int256",
        "value<int256",
        "str-value>int256",
        "str-value-101-chars",
    ],
)
def test_number_outside_its_wire_type_is_out_of_range(payload: bytes) -> None:
    assert reason_of(payload) == "out_of_range"


def test_counter_at_uint64_max_is_accepted() -> None:
    assert parse_frame(frame_json(n=UINT64_MAX, ts=UINT64_MAX)).counter == UINT64_MAX


@pytest.mark.parametrize(
    "payload",
    [
        value_json(s=""),
        value_json(s="a b"),
        value_json(s="a/b"),
        value_json(s="+"),
        value_json(s="x" * 33),
        value_json(s="température"),
        value_json(u=""),
        value_json(u="m s"),
        value_json(u="u" * 33),
        frame_json(id="dev/1"),
        frame_json(id="dev#"),
    ],
    ids=[
        "sensor-empty",
        "sensor-space",
        "sensor-slash",
        "sensor-plus",
        "sensor-33",
        "sensor-non-ascii",
        "unit-empty",
        "unit-space",
        "unit-33",
        "id-slash",
        "id-hash",
    ],
)
def test_label_outside_its_alphabet_or_length_is_bad_label(payload: bytes) -> None:
    assert reason_of(payload) == "bad_label"


def test_labels_at_32_characters_are_accepted() -> None:
    frame = parse_frame(frame_json(id="d" * 32, r=[{"s": "s" * 32, "v": 1, "u": "[" * 32}]))
    assert frame.device_id == "d" * 32
    assert frame.values[0].sensor == "s" * 32
    assert frame.values[0].unit == "[" * 32


@pytest.mark.parametrize("field", ["id", "s", "u"])
def test_label_with_trailing_newline_is_bad_label(field: str) -> None:
    payload = frame_json(id="dev\n") if field == "id" else value_json(**{field: "x\n"})
    assert reason_of(payload) == "bad_label"


def test_more_values_than_max_values_is_too_many_values() -> None:
    entries = [{"s": f"s{i}", "v": i, "u": "1"} for i in range(DEFAULT_MAX_VALUES + 1)]
    assert reason_of(frame_json(r=entries)) == "too_many_values"
    assert reason_of(frame_json(r=entries[:2]), max_values=1) == "too_many_values"
    assert len(parse_frame(frame_json(r=entries[:-1])).values) == DEFAULT_MAX_VALUES


def test_same_sensor_twice_is_duplicate_sensor() -> None:
    entries = [{"s": "t", "v": 1, "u": "Cel"}, {"s": "t", "v": 2, "u": "Cel"}]
    assert reason_of(frame_json(r=entries)) == "duplicate_sensor"


def test_mac_of_64_characters_with_spaces_is_bad_type() -> None:
    assert reason_of(frame_json(mac=" " * 62 + "aa")) == "bad_type"


@pytest.mark.parametrize("text", ["1_000", "\u0661\u0662"], ids=["underscore", "arabic-indic"])
def test_decimal_string_with_python_only_syntax_is_bad_type(text: str) -> None:
    assert reason_of(value_json(v=text)) == "bad_type"


@pytest.mark.parametrize("prefix", [b"", b'{"v":1,"n":1,"r":'], ids=["bare", "inside-frame"])
def test_nesting_as_deep_as_the_default_max_bytes_allows_is_not_json(prefix: bytes) -> None:
    payload = prefix + b"[" * (DEFAULT_MAX_BYTES - len(prefix))
    assert reason_of(payload) == "not_json"


# Deeper nesting runs in a child process: if it ever crashed the interpreter (it did once,
# when a dependency raised the recursion limit), it must not take the test session with it.
NESTED_PROBE = """
import sys
{setup}
from agent.devices.codecs.frame import parse_frame
from agent.errors import FrameError
payload = b'{{"v":1,"n":1,"r":' + b"[" * 100_000
try:
    parse_frame(payload, max_bytes=len(payload))
except FrameError as exc:
    print(exc.reason)
"""


def nested_probe(setup: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NESTED_PROBE.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_100000_nested_brackets_are_not_json_rather_than_a_recursion_error() -> None:
    result = nested_probe("")
    assert (result.returncode, result.stdout.strip()) == (0, "not_json"), result.stderr[-500:]


def test_100000_nested_brackets_are_not_json_in_the_agent_process() -> None:
    result = nested_probe("import agent.runtime  # what `edgence-agent run` loads")
    assert (result.returncode, result.stdout.strip()) == (0, "not_json"), result.stderr[-500:]


# --- the parsed frame -----------------------------------------------------------------------


def test_parsed_frame_carries_id_counter_timestamp_mac_and_raw_bytes() -> None:
    mac = bytes(range(32))
    payload = frame_json(id="dev-1", n=9, ts=1_700_000_000, mac=mac.hex())
    frame = parse_frame(payload)
    assert frame == DeviceFrame(
        device_id="dev-1",
        counter=9,
        timestamp=1_700_000_000,
        values=(SensorValue("t", 1, 0, "Cel"),),
        mac=mac,
        raw=payload,
    )


def test_readings_use_the_frame_timestamp_when_present() -> None:
    frame = parse_frame(frame_json(n=5, ts=1_700_000_000))
    (reading,) = frame.readings("dev-1", Transport.COAP, AuthMethod.HMAC, now=42)
    assert reading.timestamp == 1_700_000_000
    assert (reading.device_id, reading.sensor, reading.counter) == ("dev-1", "t", 5)
    assert (reading.transport, reading.auth) == (Transport.COAP, AuthMethod.HMAC)


def test_readings_use_now_when_the_frame_has_no_timestamp() -> None:
    entries = [{"s": "a", "v": "21.37", "u": "Cel"}, {"s": "b", "v": 3, "e": 1, "u": "%"}]
    frame = parse_frame(frame_json(r=entries))
    readings = frame.readings("dev-1", Transport.MQTT, AuthMethod.ALLOWLIST, now=42)
    assert [r.timestamp for r in readings] == [42, 42]
    assert [(r.sensor, r.decimal, r.unit) for r in readings] == [
        ("a", "21.37", "Cel"),
        ("b", "30", "%"),
    ]


# --- round trip -----------------------------------------------------------------------------


def _random_label(rng: random.Random, alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 32)))


def _random_int(rng: random.Random, lo: int, hi: int) -> int:
    edge = rng.random()
    if edge < 0.1:
        return lo
    if edge < 0.2:
        return hi
    if edge < 0.3:
        return rng.randint(max(lo, -10), min(hi, 10))
    return rng.randint(lo, hi)


def test_encode_then_parse_round_trips_500_random_frames() -> None:
    rng = random.Random(20240601)
    for case in range(500):
        names: set[str] = set()
        while len(names) < rng.randint(1, DEFAULT_MAX_VALUES):
            names.add(_random_label(rng, NAME_CHARS))
        values = [
            (
                s,
                _random_int(rng, INT256_MIN, INT256_MAX),
                _random_int(rng, -128, 127),
                _random_label(rng, UNIT_CHARS),
            )
            for s in sorted(names)
        ]
        counter = _random_int(rng, 0, UINT64_MAX)
        device_id = _random_label(rng, NAME_CHARS) if rng.random() < 0.5 else None
        timestamp = _random_int(rng, 0, UINT64_MAX) if rng.random() < 0.5 else None
        mac = rng.randbytes(32) if rng.random() < 0.5 else None
        payload = encode_frame(counter, values, device_id=device_id, timestamp=timestamp, mac=mac)
        frame = parse_frame(payload, max_bytes=len(payload))
        assert frame == DeviceFrame(
            device_id=device_id,
            counter=counter,
            timestamp=timestamp,
            values=tuple(SensorValue(*v) for v in values),
            mac=mac,
            raw=payload,
        ), f"case {case}: {payload!r}"


@pytest.mark.parametrize(
    "text",
    [
        '{"v":1,"n":9,"n":1,"r":[{"s":"t","v":1,"u":"Cel"}]}',
        '{"v":1,"n":1,"r":[{"s":"t","v":1,"v":999,"u":"Cel"}]}',
        '{"v":1,"n":1,"r":[{"s":"t","v":1,"u":"Cel"}],"mac":"' + "0" * 64 + '","mac":"1"}',
    ],
)
def test_json_with_a_key_twice_in_one_object_is_refused_as_cbor_is(text: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_frame(text.encode())
    assert info.value.reason == "not_json"
    assert "appears twice" in info.value.detail
