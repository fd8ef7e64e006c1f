"""The frame rules shared by the gateway and `edgence-agent devices check`: every violation
listed, bad_time with its likely cause, declared sensors, the counter rule, and the command's
output on the example frame of docs/device-frame.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.cli import main
from agent.devices.auth import canonical_bytes, frame_mac
from agent.devices.check import (
    canonical_digest,
    check_report,
    frame_violations,
    time_violation,
)
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.devices.registry import DeviceRecord, DeviceStatus, KeyKind
from agent.model import ClockSkew, Transport
from agent.replaywindow import replay_violation

DOC = Path(__file__).parents[3] / "docs" / "device-frame.md"
KEY = bytes(range(32))
NOW = 1_764_000_000


def doc_example() -> tuple[str, str]:
    """(frame, mac) of the *Authentication* example in docs/device-frame.md."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"device `dev-1`, frame\n`(\{.*?\})`:.*?`mac` = `([0-9a-f]{64})`", text, re.S)
    assert m, "the example frame moved in docs/device-frame.md"
    return m.group(1), m.group(2)


def bundle(**change: object) -> dict[str, object]:
    return {
        "edgence": 1,
        "device_id": "dev-1",
        "transport": "mqtt",
        "key_kind": "hmac",
        "key": KEY.hex(),
        "counter_start": 0,
        "sensors": [["temperature", "Cel"]],
    } | change


def record(sensors: tuple[tuple[str, str], ...] = (("temperature", "Cel"),)) -> DeviceRecord:
    return DeviceRecord(
        "dev-1", "dev-1", Transport.MQTT, "", KeyKind.HMAC, DeviceStatus.ACTIVE, 0, sensors
    )


def signed(counter: int, values: list[tuple[str, int, int, str]], ts: int | None = NOW) -> bytes:
    mac = frame_mac(KEY, "dev-1", parse_frame(encode_frame(counter, values, timestamp=ts)))
    return encode_frame(counter, values, timestamp=ts, mac=mac)


def reasons(payload: bytes, **kw: object) -> list[str]:
    args: dict[str, object] = {"record": record(), "key": KEY, "now": NOW} | kw
    frame = parse_frame(payload)
    return [v.reason for v in frame_violations("dev-1", frame, Transport.MQTT, **args)]  # type: ignore[arg-type]


def test_the_docs_example_frame_checks_clean_and_the_command_prints_its_bytes_and_mac(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame, mac = doc_example()
    with_mac = frame[:-1] + f',"mac":"{mac}"}}'
    path = tmp_path / "dev-1.json"
    path.write_text(json.dumps(bundle()))
    rc = main(["devices", "check", "--bundle", str(path), "--now", str(NOW), with_mac])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    canonical = r"EDGENCE-FRAME-1\n dev-1\n 42\n 1764000000\n temperature\t2137\t-2\tCel\n"
    assert [line.strip() for line in out[3:8]] == canonical.split(" ")
    assert out[2].startswith("canonical     60 bytes, sha256 ")
    assert f"expected mac  {mac}" in out
    assert f"frame mac     {mac}" in out
    assert out[-1] == "result        accepted: the gateway would sign this frame"


def test_the_command_lists_every_rule_a_frame_breaks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame, mac = doc_example()
    # milliseconds, an undeclared sensor, and so (the bytes changed) a wrong mac
    bad = frame.replace("1764000000", "1764000000000").replace("temperature", "pressure")
    path = tmp_path / "dev-1.json"
    path.write_text(json.dumps(bundle(counter_start=50)))
    rc = main(
        [
            "devices",
            "check",
            "--bundle",
            str(path),
            "--now",
            str(NOW),
            bad[:-1] + f',"mac":"{mac}"}}',
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "refused: 4 rule(s) broken" in out
    broken = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert broken[-4:] == ["bad_mac", "undeclared_sensor", "bad_time", "replay"]
    assert "milliseconds?" in out
    assert "counter 42 is not above the last accepted 49" in out


def test_the_command_reads_cbor_as_hex_and_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.devices.codecs.cbor_frame import encode_cbor_frame

    values = [("temperature", 2137, -2, "Cel")]
    mac = frame_mac(KEY, "dev-1", parse_frame(encode_frame(42, values, timestamp=NOW)))
    cbor = encode_cbor_frame(42, values, timestamp=NOW, mac=mac)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle()))
    assert main(["devices", "check", "--bundle", str(path), "--now", str(NOW), cbor.hex()]) == 0
    assert "frame         cbor (hex), counter 42" in capsys.readouterr().out
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(cbor)))
    assert main(["devices", "check", "--bundle", str(path), "--now", str(NOW), "-"]) == 0
    assert "frame         cbor, counter 42" in capsys.readouterr().out


def test_an_unparsable_frame_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle()))
    assert main(["devices", "check", "--bundle", str(path), '{"v":1,"n":"7","r":[]}']) == 1
    assert "cannot be parsed: bad_type: n must be an integer" in capsys.readouterr().out


def test_bad_mac_names_the_canonical_length_and_hash_but_not_the_key_or_mac() -> None:
    payload = signed(7, [("temperature", 2137, -2, "Cel")])
    frame = parse_frame(payload)
    (v,) = frame_violations("dev-1", frame, Transport.MQTT, record=record(), key=bytes(32), now=NOW)
    assert v.reason == "bad_mac"
    assert canonical_digest("dev-1", frame) in v.detail
    assert f"{len(canonical_bytes('dev-1', frame))} bytes, sha256 " in v.detail
    assert frame.mac is not None and frame.mac.hex() not in v.detail
    assert frame_mac(bytes(32), "dev-1", frame).hex() not in v.detail


@pytest.mark.parametrize(
    ("ts", "cause"),
    [
        (NOW * 1000, "milliseconds?"),
        (NOW + 301, "301 s ahead"),
        (NOW - 86_401, "86401 s behind"),
    ],
)
def test_a_timestamp_outside_the_skew_is_bad_time_with_its_likely_cause(
    ts: int, cause: str
) -> None:
    v = time_violation(ts, NOW, ClockSkew())
    assert v is not None and v.reason == "bad_time" and cause in v.detail


def test_timestamps_inside_the_skew_and_absent_ones_pass() -> None:
    skew = ClockSkew(past_s=10, future_s=5)
    assert [time_violation(t, NOW, skew) for t in (None, NOW - 10, NOW + 5)] == [None] * 3
    assert time_violation(NOW + 6, NOW, skew) is not None


def test_a_sensor_not_declared_at_pair_is_refused_and_undeclared_devices_send_any() -> None:
    payload = signed(1, [("temperature", 2137, -2, "Cel"), ("pressure", 101325, -2, "hPa")])
    assert reasons(payload) == ["undeclared_sensor"]
    assert reasons(signed(1, [("temperature", 2137, -2, "K")])) == ["undeclared_sensor"]
    assert reasons(payload, record=record(sensors=())) == []


def test_the_first_frame_may_use_counter_start_and_not_below() -> None:
    # A never-seen device: any counter, 0 included.
    assert replay_violation(None, 0) is None
    # A bundle's counter_start c means the gateway accepted c - 1: c itself is the next frame.
    path_report = check_report(
        bundle(counter_start=5), signed(5, [("temperature", 1, 0, "Cel")]), now=NOW
    )
    assert path_report[1] == []
    _, problems = check_report(
        bundle(counter_start=5), signed(4, [("temperature", 1, 0, "Cel")]), now=NOW
    )
    assert [p.reason for p in problems] == ["replay"]


def test_a_malformed_bundle_is_named() -> None:
    with pytest.raises(ValueError, match="no 'key'"):
        check_report({"edgence": 1, "device_id": "d"}, b"{}", now=NOW)


def test_the_output_shown_in_the_docs_is_what_the_command_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DOC.read_text(encoding="utf-8")
    m = re.search(r"\$ edgence-agent devices check (.*?) \\\n\s+'(.*?)'\n(.*?)```", text, re.S)
    assert m, "the devices check example moved in docs/device-frame.md"
    args = m.group(1).split()
    assert args[:2] == ["--bundle", "dev-1.json"]
    path = tmp_path / "dev-1.json"
    path.write_text(json.dumps(bundle()))
    rc = main(["devices", "check", "--bundle", str(path), *args[2:], m.group(2)])
    assert rc == 0
    assert capsys.readouterr().out == m.group(3)
