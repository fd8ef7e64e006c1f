"""[sources.ble]: the BLE scanner and one [sources.ble.devices.<id>] table per BTHome advertiser
or GATT peripheral."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from agent.config.reader import DEVICE_ID_RULE, Section
from agent.config.sources.limits import MAX_PAYLOAD, MAX_VALUES_PER_FRAME, read_max_values
from agent.model import NAME_RE

BleMode = Literal["bthome", "gatt"]
ScanningMode = Literal["auto", "passive", "active"]

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
_UUID_RE = re.compile(
    r"^([0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\Z"
)


@dataclass(frozen=True, kw_only=True)
class BleDeviceConfig:
    """One BLE device: a BTHome advertiser (`bthome`) or a GATT peripheral notifying device
    frames (`gatt`). `bindkey_file` (0600, 32 hex digits) makes a BTHome device encrypted-only."""

    device_id: str
    mac: str  # upper-case AA:BB:CC:DD:EE:FF
    mode: BleMode = "bthome"
    bindkey_file: Path | None = None
    characteristic: str | None = None  # gatt: the notify characteristic's UUID


@dataclass(frozen=True, kw_only=True)
class BleSourceConfig:
    enabled: bool = False
    adapter: str | None = None  # e.g. "hci0"; None: the system's default adapter
    scanning_mode: ScanningMode = "auto"
    watchdog_s: float = 90.0  # restart the scanner after this long without any advert
    plain_repeat_s: float = 60.0  # plaintext adverts without packet id: same payload taken again
    max_connections: int = 3
    connect_attempts: int = 4
    connect_timeout_s: float = 10.0
    reconnect_max_s: float = 60.0
    max_payload: int = MAX_PAYLOAD
    max_values_per_frame: int = MAX_VALUES_PER_FRAME
    devices: tuple[BleDeviceConfig, ...] = ()
    # Commands to enrolled BLE devices (docs/downlink.md, "Over BLE"): written to the first,
    # answered by notification on the second (Nordic UART Service RX and TX by default).
    command_characteristic: str = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
    answer_characteristic: str = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"


def _device(table: Section, device_id: str, macs: dict[str, str]) -> BleDeviceConfig:
    if not NAME_RE.match(device_id):
        raise table.err(device_id, f"a device id must be {DEVICE_ID_RULE}")
    d = table.sub(device_id)
    mac = d.get("mac", str, required=True)
    if not _MAC_RE.match(mac):
        raise d.err("mac", f"must be a Bluetooth address AA:BB:CC:DD:EE:FF; got {mac!r}")
    mac = mac.upper()
    if mac in macs:
        raise d.err("mac", f"{mac} is already the address of device {macs[mac]!r}")
    macs[mac] = device_id
    mode = d.choice("mode", BleDeviceConfig.mode, get_args(BleMode))
    bindkey_file = d.path("bindkey_file")
    characteristic = d.get("characteristic", str)
    if mode == "gatt":
        if characteristic is None or not _UUID_RE.match(characteristic):
            raise d.err(
                "characteristic",
                "is required for mode gatt: the UUID of the notify characteristic "
                f"(16-bit like 2a6e or 128-bit); got {characteristic!r}",
            )
        if bindkey_file is not None:
            raise d.err("bindkey_file", "is for BTHome devices (mode bthome) only")
    elif characteristic is not None:
        raise d.err("characteristic", "is for GATT devices (mode gatt) only")
    d.done()
    return BleDeviceConfig(
        device_id=device_id,
        mac=mac,
        mode=cast(BleMode, mode),
        bindkey_file=bindkey_file,
        characteristic=characteristic.lower() if characteristic else None,
    )


def _uuid(sec: Section, key: str, default: str) -> str:
    value = sec.get(key, str, default)
    if not _UUID_RE.match(value):
        raise sec.err(
            key, f"must be a characteristic UUID (16-bit like 2a6e or 128-bit); got {value!r}"
        )
    return value.lower()


def read_ble_source(sec: Section) -> BleSourceConfig:
    B = BleSourceConfig
    adapter = sec.get("adapter", str, B.adapter)
    if adapter is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,32}", adapter):
        raise sec.err("adapter", f"must be an adapter name such as hci0; got {adapter!r}")
    table = sec.sub("devices")
    macs: dict[str, str] = {}
    devices = tuple(_device(table, device_id, macs) for device_id in list(table.data))
    cfg = BleSourceConfig(
        enabled=sec.get("enabled", bool, B.enabled),
        adapter=adapter,
        scanning_mode=cast(
            ScanningMode, sec.choice("scanning_mode", B.scanning_mode, get_args(ScanningMode))
        ),
        watchdog_s=sec.duration("watchdog", B.watchdog_s),
        plain_repeat_s=sec.duration("plain_repeat", B.plain_repeat_s),
        max_connections=sec.int_range("max_connections", B.max_connections, 1, 32),
        connect_attempts=sec.int_range("connect_attempts", B.connect_attempts, 1, 100),
        connect_timeout_s=sec.duration("connect_timeout", B.connect_timeout_s),
        reconnect_max_s=sec.duration("reconnect_max", B.reconnect_max_s),
        max_payload=sec.int_range("max_payload", B.max_payload, 64, 256 * 1024),
        max_values_per_frame=read_max_values(sec),
        devices=devices,
        command_characteristic=_uuid(sec, "command_characteristic", B.command_characteristic),
        answer_characteristic=_uuid(sec, "answer_characteristic", B.answer_characteristic),
    )
    sec.done()
    return cfg
