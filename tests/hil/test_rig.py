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


def test_the_shipped_access_point_files_match_the_pi_rig() -> None:
    """hardware/ap/ gives the Pi the rig's gateway.host, serves the rig's wifi_ssid, and leases
    addresses in the same /24 (hardware/README.md, 'Access point')."""
    import ipaddress

    rig = load_rig(RIGS / "pi4-esp32.toml")
    ap = ROOT / "hardware" / "ap"

    def values(name: str, key: str) -> list[str]:
        lines = (ap / name).read_text().splitlines()
        return [ln.split("=", 1)[1] for ln in lines if ln.startswith(f"{key}=")]

    assert values("hostapd.conf", "ssid") == [rig.boards[0].wifi_ssid]
    assert values("hostapd.conf", "interface") == values("dnsmasq.conf", "interface") == ["wlan0"]
    (address,) = values("10-edgence-hil.network", "Address")
    net = ipaddress.ip_interface(address)
    assert str(net.ip) == rig.gateway_host
    (dhcp,) = values("dnsmasq.conf", "dhcp-range")
    first, last = (ipaddress.ip_address(x) for x in dhcp.split(",")[:2])
    assert first in net.network and last in net.network and net.ip not in (first, last)
    # hostapd reads a comment after a value as part of the value
    hostapd = (ap / "hostapd.conf").read_text().splitlines()
    assert not [ln for ln in hostapd if "#" in ln and not ln.startswith("#")]
