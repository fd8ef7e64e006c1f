"""The firmware's whole loop under real MicroPython (and the same script on CPython): a bundle
parsed, readings signed, a UART link that goes away for two cycles and comes back. What it
wrote must be what the agent accepts: CRC-32 lines around frames whose MAC verifies."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from agent.devices.auth import mac_matches
from agent.devices.codecs.frame import parse_frame
from tests.firmware.conftest import FIRMWARE, MP_TESTS

SCRIPT = MP_TESTS / "mp_app.py"


@pytest.fixture(scope="module")
def on_micropython() -> Any:
    from tests.firmware.conftest import run_micropython

    out = run_micropython(
        SCRIPT, (FIRMWARE / "boot.py", "/boot.py"), (FIRMWARE / "main.py", "/main.py")
    )
    return json.loads(out.strip().splitlines()[-1])


def test_the_loop_under_micropython_sends_buffers_and_catches_up(on_micropython: Any) -> None:
    r = on_micropython
    assert r["compiled"] == ["boot.py", "main.py"]
    assert r["buffered_while_down"] == 2 and r["left"] == 0 and r["sent"] == 5
    # The watchdog was fed by each delivery and by nothing else (a 1 ms window).
    assert r["feeds_after_each_phase"] == [2, 2, 5]
    # Counters 5..9 from counter_start 5 in blocks of 3: ends 8 and 11 written, twice.
    assert r["next"] == 10 and r["flash_writes"] == 2
    key = bytes.fromhex("0f" * 32)
    counters = []
    for line in r["lines"]:
        raw = line.encode()
        body, star, crc = raw[:-2].rpartition(b"*")
        assert raw.endswith(b"\r\n") and star and int(crc, 16) == zlib.crc32(body)
        frame = parse_frame(body)
        assert mac_matches(key, "uart-1", frame)
        counters.append(frame.counter)
    assert counters == [5, 6, 7, 8, 9]  # the two buffered frames went out first, in order


def test_cpython_runs_the_same_loop_to_the_same_bytes(
    on_micropython: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sources = [str(FIRMWARE / "boot.py"), str(FIRMWARE / "main.py")]
    exec(
        compile(SCRIPT.read_text(), str(SCRIPT), "exec"),
        {"FLASH": str(tmp_path), "SOURCES": sources},
    )
    on_cpython = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert on_cpython == on_micropython
