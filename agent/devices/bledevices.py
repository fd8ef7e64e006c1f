"""Which BLE devices the gateway knows: those of [sources.ble.devices] (bindkeys from their 0600
files) and those enrolled with `pair --transport ble`, and the pipeline's check of a BLE arrival
against them. No radio here (agent/devices/ble.py scans, agent/devices/blegatt.py connects)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from agent.config import BleDeviceConfig
from agent.devices.gate import EnrollmentGate
from agent.devices.registry import DeviceStatus
from agent.errors import KeyFileError, RejectedReading
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival
from agent.secrets import check_secret_mode


@dataclass(frozen=True, slots=True)
class BleDevice:
    """What the source needs to know about one BLE device."""

    device_id: str
    mac: str  # upper-case AA:BB:CC:DD:EE:FF
    mode: Literal["bthome", "gatt"]
    bindkey: bytes | None = None  # BTHome AES key: the device is accepted encrypted only
    characteristic: str | None = None  # gatt: UUID of the notify characteristic


class BleDeviceDirectory(Protocol):
    """Where BLE devices come from: the config, and the enrollment registry."""

    # True when devices may appear while running (enrolled with `pair`): scan even with none.
    dynamic: bool

    def by_mac(self, mac: str) -> BleDevice | None: ...

    def by_id(self, device_id: str) -> BleDevice | None: ...

    def all(self) -> Sequence[BleDevice]: ...


def read_bindkey(path: Any) -> bytes:
    """A BTHome bindkey file: mode 0600, 32 hex digits (whitespace around them ignored)."""
    check_secret_mode(path)
    text = open(path, encoding="ascii", errors="replace").read().strip()  # noqa: SIM115
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise KeyFileError(f"{path}: a BTHome bindkey file holds 32 hex digits (16 bytes)")
    return key


class ConfiguredBleDevices:
    """The devices of `[sources.ble.devices]`, bindkeys read from their 0600 files."""

    dynamic = False

    def __init__(self, devices: Sequence[BleDeviceConfig]) -> None:
        self._by_mac: dict[str, BleDevice] = {}
        self._by_id: dict[str, BleDevice] = {}
        for d in devices:
            bindkey = read_bindkey(d.bindkey_file) if d.bindkey_file is not None else None
            dev = BleDevice(d.device_id, d.mac, d.mode, bindkey, d.characteristic)
            self._by_mac[d.mac] = dev
            self._by_id[d.device_id] = dev

    def by_mac(self, mac: str) -> BleDevice | None:
        return self._by_mac.get(mac)

    def by_id(self, device_id: str) -> BleDevice | None:
        return self._by_id.get(device_id)

    def all(self) -> Sequence[BleDevice]:
        return list(self._by_id.values())


class EnrolledBleDevices:
    """Configured devices plus those enrolled with `edgence-agent pair --transport ble
    --address MAC --bindkey HEX`, as the enrollment gate currently knows them (it re-reads the
    registry when it changes). Revoked devices are left out; the gate refuses them anyway."""

    dynamic = True

    def __init__(self, configured: ConfiguredBleDevices, gate: EnrollmentGate) -> None:
        self.configured = configured
        self.gate = gate
        self._seen: object = None
        self._by_mac: dict[str, BleDevice] = {}
        self._by_id: dict[str, BleDevice] = {}

    def _refresh(self) -> None:
        records = self.gate.records
        if records is self._seen:  # the gate replaces the mapping on every reload
            return
        by_mac: dict[str, BleDevice] = {}
        for rec in records.values():
            if rec.transport is not Transport.BLE or rec.status is DeviceStatus.REVOKED:
                continue
            mac = rec.address.upper()
            key = self.gate.keys.get(rec.id)
            by_mac[mac] = BleDevice(rec.id, mac, "bthome", key)
        self._by_mac = by_mac
        self._by_id = {d.device_id: d for d in by_mac.values()}
        self._seen = records

    def is_enrolled(self, device_id: str) -> bool:
        return self.configured.by_id(device_id) is None and self.by_id(device_id) is not None

    def by_mac(self, mac: str) -> BleDevice | None:
        self._refresh()
        return self.configured.by_mac(mac) or self._by_mac.get(mac)

    def by_id(self, device_id: str) -> BleDevice | None:
        self._refresh()
        return self.configured.by_id(device_id) or self._by_id.get(device_id)

    def all(self) -> Sequence[BleDevice]:
        self._refresh()
        return [*self.configured.all(), *self._by_id.values()]


class BleGate:
    """The pipeline's check for BLE arrivals: the device must be in the directory, and a
    device with a bindkey is accepted only from adverts whose MIC the source verified.
    Enrolled devices are checked by the enrollment gate (status, join window, rate)."""

    def __init__(
        self, directory: BleDeviceDirectory, enrolled: EnrollmentGate | None = None
    ) -> None:
        self.directory = directory
        self.enrolled = enrolled

    def check(self, arrival: Arrival) -> AuthMethod:
        if (
            self.enrolled is not None
            and isinstance(self.directory, EnrolledBleDevices)
            and self.directory.is_enrolled(arrival.device_id)
        ):
            return self.enrolled.check(arrival)
        dev = self.directory.by_id(arrival.device_id)
        if dev is None:
            raise RejectedReading("unknown_device", f"{arrival.device_id!r} is no BLE device")
        if dev.bindkey is not None and arrival.verified is not AuthMethod.BTHOME:
            raise RejectedReading("downgrade", "device has a bindkey; plaintext is refused")
        return arrival.verified or AuthMethod.ALLOWLIST

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        """Enrolled devices spend their budget at the enrollment gate; configured ones have
        none (a radio is rate-limited by the air)."""
        if (
            self.enrolled is not None
            and isinstance(self.directory, EnrolledBleDevices)
            and self.directory.is_enrolled(arrival.device_id)
        ):
            self.enrolled.admit(arrival, auth)


__all__ = [
    "BleDevice",
    "BleDeviceDirectory",
    "BleGate",
    "ConfiguredBleDevices",
    "EnrolledBleDevices",
    "read_bindkey",
]
