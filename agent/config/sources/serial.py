"""[sources.serial]: one [[sources.serial.ports]] table per serial port and who may speak on it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from agent.config.reader import Section
from agent.config.sources.limits import MAX_VALUES_PER_FRAME, read_max_values


@dataclass(frozen=True, kw_only=True)
class SerialPortConfig:
    path: Path
    baud: int = 115200
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    device: str | None = None  # device id of frames on this port that carry no "id"
    gps_device: str | None = None  # NMEA sentences on this port become this device's readings
    allowed_devices: tuple[str, ...] = ()  # further ids that frames on this port may carry
    max_line: int = 4112

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(d for d in (self.device, *self.allowed_devices) if d is not None)


@dataclass(frozen=True, kw_only=True)
class SerialSourceConfig:
    ports: tuple[SerialPortConfig, ...] = ()
    max_values_per_frame: int = MAX_VALUES_PER_FRAME
    reopen_max_s: float = 10.0

    @property
    def allowed_devices(self) -> frozenset[str]:
        out: set[str] = set()
        for p in self.ports:
            out |= p.devices
            if p.gps_device is not None:
                out.add(p.gps_device)
        return frozenset(out)


def _port(p: Section) -> SerialPortConfig:
    P = SerialPortConfig
    default_framing = f"{P.bytesize}{P.parity}{P.stopbits}"
    framing = p.get("framing", str, default_framing)
    if not re.fullmatch(r"[5-8][NEO][12]", framing):
        raise p.err("framing", f"must be data bits, parity, stop bits such as 8N1; got {framing!r}")
    port = SerialPortConfig(
        path=cast(Path, p.path("path", required=True)),
        baud=p.int_range("baud", P.baud, 50, 4_000_000),
        bytesize=int(framing[0]),
        parity=cast(Literal["N", "E", "O"], framing[1]),
        stopbits=int(framing[2]),
        device=p.device_id("device"),
        gps_device=p.device_id("gps_device"),
        allowed_devices=p.device_ids("allowed_devices", P.allowed_devices),
        max_line=p.int_range("max_line", P.max_line, 128, 1024 * 1024),
    )
    p.done()
    return port


def read_serial_source(sr: Section) -> SerialSourceConfig:
    ports = tuple(_port(p) for p in sr.sub_list("ports"))
    paths = [p.path for p in ports]
    if len(set(paths)) != len(paths):
        raise sr.err("ports", "lists one path twice; each port may be read by one reader only")
    bound: dict[str, Path] = {}
    for p in ports:
        for d in sorted(p.devices | ({p.gps_device} if p.gps_device else set())):
            if d in bound:
                raise sr.err(
                    "ports",
                    f"binds device {d!r} to {bound[d]} and to {p.path}; a device id is bound "
                    "to one port (device, gps_device, allowed_devices), so that one port "
                    "cannot speak for another's device",
                )
            bound[d] = p.path
    cfg = SerialSourceConfig(
        ports=ports,
        max_values_per_frame=read_max_values(sr),
        reopen_max_s=sr.duration("reopen_max", SerialSourceConfig.reopen_max_s),
    )
    sr.done()
    return cfg
