"""BLE bindkey files (refused with the fix when not 0600 or not 16 bytes) and the pipeline's BLE
gate: a device with a bindkey is refused plaintext. The [sources.ble] config itself is tested in
tests/unit/config/sources/test_ble.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import BleSourceConfig, config_from_dict
from agent.devices.bledevices import BleDevice, BleGate, ConfiguredBleDevices, read_bindkey
from agent.devices.codecs.frame import encode_frame, parse_frame
from agent.errors import KeyFileError, RejectedReading
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival


def load(tmp_path: Path, ble: dict[str, Any]) -> BleSourceConfig:
    raw = {"gateway": {"key_file": "k"}, "sources": {"ble": ble}}
    return config_from_dict(raw, str(tmp_path / "agent.toml"), tmp_path).sources.ble


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
