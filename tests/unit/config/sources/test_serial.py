"""[sources.serial] (agent/config/sources/serial.py): one [[sources.serial.ports]] table per port,
and errors that name the file and the dotted key (with the entry's index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.helpers import MINIMAL, load, refusal


def test_serial_is_off_unless_a_port_is_listed(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL).sources.serial.ports == ()


def test_a_full_serial_configuration_is_read(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        MINIMAL
        + """
[[sources.serial.ports]]
path = "/dev/serial/by-id/usb-gps"
baud = 9600
framing = "7E2"
gps_device = "gps-1"
[[sources.serial.ports]]
path = "ttyACM0"
device = "s-1"
allowed_devices = ["s-2"]
""",
    )
    gps, acm = cfg.sources.serial.ports
    assert (gps.baud, gps.bytesize, gps.parity, gps.stopbits, gps.gps_device) == (
        9600,
        7,
        "E",
        2,
        "gps-1",
    )
    assert acm.path == tmp_path / "ttyACM0" and acm.baud == 115200
    assert (acm.bytesize, acm.parity, acm.stopbits) == (8, "N", 1)
    assert cfg.sources.serial.allowed_devices == {"gps-1", "s-1", "s-2"}


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[[sources.serial.ports]]\nbaud = 9600\n", "sources.serial.ports[0].path", "required"),
        (
            "[[sources.serial.ports]]\npath = 'a'\nframing = '8X1'\n",
            "sources.serial.ports[0].framing",
            "8N1",
        ),
        (
            "[[sources.serial.ports]]\npath = 'a'\n[[sources.serial.ports]]\npath = 'a'\n",
            "sources.serial.ports",
            "one path twice",
        ),
        (
            "[[sources.serial.ports]]\npath = 'a'\ngps_device = 'no/slash'\n",
            "sources.serial.ports[0].gps_device",
            "device id",
        ),
        (
            "[[sources.serial.ports]]\npath = 'a'\nspeed = 9600\n",
            "sources.serial.ports[0].speed",
            "allowed here: ",
        ),
    ],
)
def test_bad_serial_settings_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path, msg = refusal(tmp_path, MINIMAL + text)
    assert str(path) in msg and f"[{key}]" in msg and words in msg, msg
