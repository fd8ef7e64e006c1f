"""`[sources.ble]` config and bindkey files: every error names the file and key (or the file and
the fix), and a device with a bindkey is refused plaintext by the pipeline's BLE gate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import config_from_dict
from agent.devices.ble import BleDevice, BleGate, ConfiguredBleDevices, read_bindkey
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.errors import ConfigError, KeyFileError, RejectedReading
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival


def load(tmp_path: Path, ble: dict[str, Any]) -> Any:
    raw = {"gateway": {"key_file": "k"}, "sources": {"ble": ble}}
    return config_from_dict(raw, str(tmp_path / "agent.toml"), tmp_path).ble


def test_defaults_and_a_full_section(tmp_path: Path) -> None:
    assert load(tmp_path, {}).enabled is False
    cfg = load(
        tmp_path,
        {
            "enabled": True,
            "adapter": "hci1",
            "watchdog": "2m",
            "devices": {
                "ht-1": {"mac": "54:48:e6:8f:80:a5", "bindkey_file": "keys/ht-1"},
                "g-1": {"mac": "11:22:33:44:55:66", "mode": "gatt", "characteristic": "2A6E"},
            },
        },
    )
    assert cfg.watchdog_s == 120.0 and cfg.adapter == "hci1" and cfg.scanning_mode == "auto"
    ht, g = cfg.devices
    assert ht.mac == "54:48:E6:8F:80:A5" and ht.bindkey_file == tmp_path / "keys/ht-1"
    assert g.mode == "gatt" and g.characteristic == "2a6e"


@pytest.mark.parametrize(
    ("ble", "key", "fragment"),
    [
        ({"devices": {"d": {"mac": "zz"}}}, "sources.ble.devices.d.mac", "Bluetooth address"),
        ({"devices": {"d": {}}}, "sources.ble.devices.d.mac", "is required"),
        (
            {"devices": {"d": {"mac": "11:22:33:44:55:66", "mode": "gatt"}}},
            "sources.ble.devices.d.characteristic",
            "required for mode gatt",
        ),
        (
            {"devices": {"d": {"mac": "11:22:33:44:55:66", "characteristic": "2a6e"}}},
            "sources.ble.devices.d.characteristic",
            "mode gatt",
        ),
        (
            {"devices": {"d": {"mac": "11:22:33:44:55:66", "mode": "beacon"}}},
            "sources.ble.devices.d.mode",
            "bthome, gatt",
        ),
        (
            {"devices": {"a": {"mac": "11:22:33:44:55:66"}, "b": {"mac": "11:22:33:44:55:66"}}},
            "sources.ble.devices.b.mac",
            "already",
        ),
        (
            {"devices": {"bad id": {"mac": "11:22:33:44:55:66"}}},
            "sources.ble.devices.bad id",
            "a device id must be",
        ),
        ({"scanning_mode": "fast"}, "sources.ble.scanning_mode", "auto, passive, active"),
        ({"watchdog": "soon"}, "sources.ble.watchdog", "duration"),
        ({"colour": "blue"}, "sources.ble.colour", "not a known key"),
    ],
)
def test_config_errors_name_the_key(
    tmp_path: Path, ble: dict[str, Any], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, ble)
    assert err.value.key == key
    assert fragment in err.value.problem


def test_bindkey_file_must_be_private_and_hold_16_bytes(tmp_path: Path) -> None:
    f = tmp_path / "ht.bindkey"
    f.write_text("231d39c1d7cc1ab1aee224cd096db932\n")
    f.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        read_bindkey(f)
    f.chmod(0o600)
    assert read_bindkey(f) == bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
    f.write_text("231d39c1")
    with pytest.raises(KeyFileError, match="32 hex digits"):
        read_bindkey(f)


def test_gate_refuses_unverified_frames_of_a_keyed_device_and_unknown_devices(
    tmp_path: Path,
) -> None:
    f = tmp_path / "k"
    f.write_text("00" * 16)
    f.chmod(0o600)
    cfg = load(
        tmp_path,
        {
            "devices": {
                "keyed": {"mac": "11:22:33:44:55:66", "bindkey_file": "k"},
                "open": {"mac": "11:22:33:44:55:67"},
            }
        },
    )
    directory = ConfiguredBleDevices(cfg.devices)
    assert directory.by_mac("11:22:33:44:55:66") == BleDevice(
        "keyed", "11:22:33:44:55:66", "bthome", bytes(16), None
    )
    gate = BleGate(directory)
    frame = parse_frame(encode_frame(1, [("t", 1, 0, "Cel")]))

    def arrival(device: str, verified: AuthMethod | None) -> Arrival:
        return Arrival(frame, device, Transport.BLE, "ble", verified=verified)

    assert gate.check(arrival("keyed", AuthMethod.BTHOME)) is AuthMethod.BTHOME
    assert gate.check(arrival("open", None)) is AuthMethod.ALLOWLIST
    for device, verified, reason in [
        ("keyed", None, "downgrade"),
        ("nobody", None, "unknown_device"),
    ]:
        with pytest.raises(RejectedReading) as err:
            gate.check(arrival(device, verified))
        assert err.value.reason == reason
