"""Rig files: the two shipped rigs load; mistakes name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError
from tests.conftest import ROOT
from tests.hil.rig import load_rig

RIGS = ROOT / "hardware" / "rigs"


def test_the_shipped_rigs_load() -> None:
    emu = load_rig(RIGS / "emulated.toml")
    assert emu.name == "emulated" and emu.boards[0].kind == "emulated"
    assert emu.boards[0].has("power_cycle") and not emu.boards[0].has("ble")
    real = load_rig(RIGS / "pi4-esp32.toml")
    b = real.boards[0]
    assert (b.kind, b.uart_port, b.power_relay_gpio) == ("esp32", "/dev/ttyAMA0", 17)
    assert b.power_relay_active_low and not emu.boards[0].power_relay_active_low
    assert b.has("bme280") and b.has("ble") and real.gateway_mqtt_port == 18830
    assert real.gateway_coap_port == 5683


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[rig]\nname="x"\n[[board]]\nname="b"\nkind="arduino"\n',
            r"\[board\[0\].kind\] 'arduino'",
        ),
        ('[rig]\nname="x"\n[[board]]\nname="b"\nkind="esp32"\n', r"\[board\[0\].port\] a esp32"),
        (
            '[rig]\nname="x"\n[[board]]\nname="b"\nkind="emulated"\nfixtures=["laser"]\n',
            r"\[board\[0\].fixtures\] 'laser' is not one of",
        ),
        (
            '[rig]\nname="x"\n[[board]]\nname="b"\nkind="emulated"\nspeed=1\n',
            r"\[board\[0\].speed\] unknown key",
        ),
        ('[rig]\nname="x"\n', r"\[board\] is missing"),
        ("[rig\n", "not a readable TOML rig file"),
    ],
)
def test_rig_mistakes_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "rig.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_rig(p)
    assert str(p) in str(e.value)
