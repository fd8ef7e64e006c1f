"""[sources.ble] (agent/config/sources/ble.py): defaults, one table per device, and every error
naming the file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import BleSourceConfig, config_from_dict
from agent.errors import ConfigError


def load(tmp_path: Path, ble: dict[str, Any]) -> BleSourceConfig:
    raw = {"gateway": {"key_file": "k"}, "sources": {"ble": ble}}
    return config_from_dict(raw, str(tmp_path / "agent.toml"), tmp_path).sources.ble


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


def test_command_characteristics_default_to_the_uart_service_and_are_checked(
    tmp_path: Path,
) -> None:
    ble = load(tmp_path, {"enabled": True})
    assert ble.command_characteristic == "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
    assert ble.answer_characteristic == "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
    assert load(tmp_path, {"command_characteristic": "FFE1"}).command_characteristic == "ffe1"
    with pytest.raises(ConfigError) as e:
        load(tmp_path, {"answer_characteristic": "nope"})
    msg = str(e.value)
    assert "sources.ble.answer_characteristic" in msg and "characteristic UUID" in msg
    assert "agent.toml" in msg
