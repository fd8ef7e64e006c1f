"""The firmware's device-independent core (counter, outbox, BTHome, serial line, CoAP POST)
on one fixed scenario, run unchanged under real MicroPython (wasm) and under CPython: both must
give the same answer, and that answer must be what the specs say."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES
from edgence import aes, bthome, serialline

from tests.firmware.conftest import MP_TESTS

SCRIPT = MP_TESTS / "mp_core.py"


def run_on_cpython(flash: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    exec(compile(SCRIPT.read_text(), str(SCRIPT), "exec"), {"FLASH": str(flash)})
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def on_micropython() -> Any:
    from tests.firmware.conftest import run_micropython

    return json.loads(run_micropython(SCRIPT).strip().splitlines()[-1])


def test_micropython_and_cpython_agree_on_the_core(
    on_micropython: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_on_cpython(tmp_path, capsys) == on_micropython


def test_counters_are_reserved_in_blocks_and_never_reused_after_a_reboot(
    on_micropython: Any,
) -> None:
    c = on_micropython["counter"]
    assert c["first"] == [10, 11, 12, 13, 14, 15]
    assert c["writes"] == 2 and c["stored"] == 18  # two blocks of 4 for six counters
    assert c["after_reboot"] == [18] and c["writes_after_reboot"] == 1
    # Deep sleep keeps the exact counter in RTC memory: no block skipped, no flash write.
    assert c["deep_sleep"] == [22, 23, 24] and c["deep_sleep_writes"] == 0
    # RTC memory holds the next unused counter, written before each one goes out: after a
    # watchdog reset the board goes on at exactly 25, never reusing 24 nor skipping to 26.
    assert c["reset_after_wake"] == 25
    assert c["rotated"] == 1000  # a new bundle's counter_start ahead of flash wins
    # A torn newest slot (power cut mid-write) gives the previous end; both torn is refused
    # with the way out; 0.1's counter.dat is taken over once, and refused when torn.
    assert c["power_cut_cases"] == [
        4, "CounterError", 500, ["counter.a"], "CounterError"
    ]  # fmt: skip


def test_the_outbox_keeps_the_newest_frames_in_flash_and_leaves_no_file_when_empty(
    on_micropython: Any,
) -> None:
    o = on_micropython["outbox"]
    assert o["frames"] == ['{"i":2}', '{"i":3}', '{"i":4}'] and o["dropped"] == 2
    assert o["reloaded"] == o["frames"]
    assert o["after_pop"] == ['{"i":3}', '{"i":4}']
    assert o["files_left"] == []


def test_the_outbox_drops_whole_old_segments_resumes_after_reboot_and_skips_bad_records(
    on_micropython: Any,
) -> None:
    o = on_micropython["outbox"]
    # 11 frames into a budget of 8 in segments of 2: the two oldest segments went.
    assert o["seg_frames"] == [f'{{"i":{i}}}' for i in range(4, 11)] and o["seg_dropped"] == 4
    assert o["seg_files"] == 4
    # Frame 4 delivered; after a reboot delivery resumes at 5, nothing sent twice.
    assert o["seg_pop"] == '{"i":4}' and o["seg_after_reboot"] == ['{"i":5}', 6]
    assert o["seg_torn_tail"] == 6  # the cut record is not a frame
    frames, dropped = o["seg_corrupt"]
    assert frames == [f'{{"i":{i}}}' for i in (7, 8, 9, 10)] and dropped == 1
    assert o["seg_files_left"] == []
    # Frames a 0.1 firmware left in outbox.txt are taken over (a cut last line is not a frame).
    frames, files = o["migrated"]
    assert frames == ['{"n":1}', '{"n":2}'] and len(files) == 1 and files[0].startswith("ob.")


def test_bthome_encrypted_payload_matches_the_spec_example(on_micropython: Any) -> None:
    # BTHome v2 spec, "Encryption": bindkey 231d39c1..., MAC 54:48:E6:8F:80:A5, counter
    # 00112233, temperature 25.06 C + humidity 50.55 % -> this service data payload.
    assert on_micropython["bthome_objects"] == "02ca0903bf13"
    assert on_micropython["bthome_encrypted"] == "41a47266c95f730011223378237214"


def test_bthome_plain_advertisement_layout(on_micropython: Any) -> None:
    adv = bytes.fromhex(on_micropython["bthome_plain"])
    assert adv[:3] == b"\x02\x01\x06"  # flags
    sd = adv[3 : 4 + adv[3]]
    assert sd[1:4] == b"\x16\xd2\xfc" and sd[4] == 0x40  # service data, UUID 0xFCD2, v2 plain
    assert sd[5:] == bytes.fromhex("0007" + "02ca09" + "03bf13")  # packet id first: ids sorted
    assert adv[4 + adv[3] :] == b"\x03\x09b1"  # complete local name


@pytest.mark.parametrize("n", [0, 1, 6, 16, 17, 33])
def test_hand_built_ccm_matches_pycryptodome(n: int) -> None:
    key, nonce, msg = os.urandom(16), os.urandom(13), os.urandom(n)
    ct, tag = AES.new(key, AES.MODE_CCM, nonce=nonce, mac_len=4).encrypt_and_digest(msg)
    assert bthome.ccm_encrypt(aes.ecb(key), nonce, msg) == ct + tag


def test_pure_python_aes_matches_fips_197() -> None:
    got = aes.ecb(bytes(range(16)))(bytes.fromhex("00112233445566778899aabbccddeeff"))
    assert got.hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"  # FIPS-197 appendix C.1


def test_serial_line_is_frame_star_crc32_crlf(on_micropython: Any, monkeypatch: Any) -> None:
    line = on_micropython["serial_line"].encode()
    body, crc = line[:-11], line[-10:-2]
    assert line.endswith(b"\r\n") and line[-11:-10] == b"*"
    assert int(crc, 16) == zlib.crc32(body)
    monkeypatch.setattr(serialline, "_crc32", None)  # the bitwise fallback for bare ports
    assert serialline.encode_line(body) == line
    with pytest.raises(ValueError):
        serialline.encode_line(b'{"a":\n1}')


def test_coap_post_is_a_confirmable_post_to_up_device(on_micropython: Any) -> None:
    msg = bytes.fromhex(on_micropython["coap_post"])
    # RFC 7252: ver 1, CON, TKL 4 | POST (0.02) | message id | token
    assert msg[:8] == bytes.fromhex("44021234" + "01020304")
    # Uri-Path (11) "up", Uri-Path (delta 0) "dev-1", Content-Format (delta 1) 50, marker
    assert msg[8:20] == b"\xb2up\x05dev-1\x11\x32\xff"
    assert json.loads(msg[20:])["n"] == 42
