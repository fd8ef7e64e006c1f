"""Serial framing: lines from arbitrary chunking, a bound on line length, CRC-32 checks that
catch a flipped bit, and resynchronisation after garbage."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest

from agent.devices.codecs.frame import encode_frame
from agent.devices.codecs.serial_line import (
    LineKind,
    LineSplitter,
    classify_line,
    encode_serial_frame,
    frame_payload,
)
from agent.errors import FrameError


def frame(n: int) -> bytes:
    return encode_frame(n, [("t", n, -1, "Cel"), ("h", 2 * n, 0, "%")])


def test_any_chunking_of_a_stream_yields_the_same_lines() -> None:
    lines = [encode_serial_frame(frame(n)) for n in range(200)]
    stream = b"".join(lines)
    want = [ln.rstrip(b"\r\n") for ln in lines]
    rng = random.Random(5)
    for _ in range(50):
        sp, got, i = LineSplitter(), [], 0
        while i < len(stream):
            step = rng.randint(1, 300)
            got += sp.feed(stream[i : i + step])
            i += step
        assert got == want and sp.overlong == 0 and sp.pending == 0


def test_an_overlong_line_is_dropped_whole_and_the_next_line_survives() -> None:
    sp = LineSplitter(max_line=100)
    out = []
    for _ in range(64):
        out += sp.feed(b"x" * 1024)  # 64 KiB without newline
        assert sp.pending <= 100  # memory stays bounded
    out += sp.feed(b"yyy\nok-1\n" + b"z" * 150 + b"\nok-2\n")
    assert out == [b"ok-1", b"ok-2"]
    assert sp.overlong == 2


def test_reset_forgets_a_partial_line() -> None:
    sp = LineSplitter()
    assert sp.feed(b"{half") == [] and sp.pending == 5
    sp.reset()
    assert sp.feed(b"whole\n") == [b"whole"]


def test_every_single_bit_flip_in_a_frame_line_is_detected() -> None:
    line = encode_serial_frame(frame(42)).rstrip(b"\r\n")
    assert frame_payload(line) == (frame(42), 0)
    for i in range(len(line)):
        for bit in range(8):
            bad = bytearray(line)
            bad[i] ^= 1 << bit
            try:
                payload, _ = frame_payload(bytes(bad))
            except FrameError as exc:
                assert exc.reason in ("bad_crc", "no_crc")
            else:  # only possible if the flip hit nothing that matters; it never may
                raise AssertionError(f"flip at byte {i} bit {bit} passed as {payload!r}")


def test_garbage_before_a_frame_on_the_same_line_is_skipped() -> None:
    body = frame(7)
    line = b'\x00\xff{"noise{"' + encode_serial_frame(body).rstrip(b"\r\n")
    assert frame_payload(line) == (body, 11)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (frame(1), "no_crc"),
        (frame(1) + b"*1234567", "no_crc"),
        (frame(1) + b"*zzzzzzzz", "no_crc"),
        (frame(1) + b"*%08x" % (zlib.crc32(frame(1)) ^ 1), "bad_crc"),
    ],
)
def test_lines_without_a_matching_crc_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        frame_payload(line)
    assert err.value.reason == reason


def test_lines_are_classified_by_their_suffix() -> None:
    assert classify_line(encode_serial_frame(frame(1)).rstrip()) is LineKind.FRAME
    assert classify_line(b"$GPGSV,1,1,00*79") is LineKind.NMEA
    assert classify_line(b"\x00\x01random") is LineKind.GARBAGE
    assert classify_line(b"a*bc") is LineKind.GARBAGE  # no '$'


def test_a_frame_with_a_newline_cannot_be_encoded_for_serial() -> None:
    with pytest.raises(ValueError):
        encode_serial_frame(b'{"v":1,\n"n":1}')


def test_the_example_line_in_the_specification_checks_out() -> None:
    spec = (Path(__file__).parents[4] / "docs" / "device-frame.md").read_text()
    (example,) = [ln for ln in spec.splitlines() if ln.startswith('{"v":1,"id":"uart-1"')]
    assert example.endswith("\\r\\n")
    payload, skipped = frame_payload(example[: -len("\\r\\n")].encode())
    assert skipped == 0 and payload.startswith(b'{"v":1')
