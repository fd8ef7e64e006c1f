"""BLE source: one long-lived bleak scanner for BTHome v2 adverts, and the GATT sessions of
peripherals that notify device frames (agent/devices/blegatt.py). Parsing lives in
codecs/bthome.py and codecs/frame.py; which devices are known, in agent/devices/bledevices.py.

The same code runs with BlueZ on a Raspberry Pi and with a Bumble-backed bleak backend in tests:
only the `BleBackend` differs (docs/ble.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from bleak import BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakDBusError, BleakError

from agent.backoff import Backoff
from agent.component import Detail, Health, State
from agent.config import BleSourceConfig
from agent.devices.bledevices import BleDevice, BleDeviceDirectory
from agent.devices.blegatt import GattFrames, GattLink
from agent.devices.codecs.bthome import (
    BTHOME_SERVICE_UUID,
    FLAG_ENCRYPTED,
    FLAG_MAC_INCLUDED,
    mac_bytes,
    parse_bthome,
)
from agent.errors import BleUnavailable, FrameError
from agent.frame import DeviceFrame, SensorValue, counter_key
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival, Pipeline

INSTALL_HINT = (
    "sudo apt-get install bluez dbus && sudo systemctl enable --now bluetooth "
    "(in a container, mount /run/dbus/system_bus_socket); or set [sources.ble] enabled = false"
)


@dataclass(frozen=True)
class BleBackend:
    """bleak backends to use; None means the platform's own (BlueZ on Linux)."""

    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None


@dataclass
class _AdvertState:
    last_raw: bytes = b""
    last_counter: int | None = None  # encrypted: the last counter offered
    last_packet_id: int | None = None
    last_plain_at: float = -1e18
    last_assigned: int = 0  # plaintext: the last gateway-assigned counter


def _unavailable(exc: BaseException) -> bool:
    """Does this error mean the Bluetooth stack itself is missing (not a passing failure)?"""
    if isinstance(exc, OSError):  # no D-Bus socket, or not allowed to use it
        return True
    if isinstance(exc, BleakDBusError):
        return exc.dbus_error in (
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.AccessDenied",
            "org.freedesktop.DBus.Error.NoServer",
        )
    text = str(exc).lower()
    return isinstance(exc, BleakError) and "adapter" in text and "not found" in text


class BleSource:
    name = "ble"

    def __init__(
        self,
        cfg: BleSourceConfig,
        *,
        pipeline: Pipeline,
        metrics: Metrics,
        directory: BleDeviceDirectory,
        backend: BleBackend | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.directory = directory
        self.backend = backend or BleBackend()
        self.log = logger or logging.getLogger("agent.devices.ble")
        self._rl = RateLimitedLog(self.log)
        self.ready = asyncio.Event()  # the first scanner start was attempted
        self.scanning = asyncio.Event()
        self.scanning_mode: str | None = None
        self._scanner: BleakScanner | None = None
        self._restart = asyncio.Event()
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_advert = 0.0
        self._state: dict[str, _AdvertState] = {}
        self._paused = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._adverts = 0
        self.gatt_link = GattLink(cfg, metrics, self.backend.client, self.log)
        self.gatt = GattFrames(self.gatt_link, pipeline, self._offer, lambda: self._stopping)
        metrics.gauge("frames_received_ble", lambda: float(self.received))

    @property
    def received(self) -> int:
        """BTHome adverts and GATT frames received."""
        return self._adverts + self.gatt.received

    @property
    def connected(self) -> set[str]:
        """Device ids with a live GATT frame session."""
        return self.gatt.connected

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        self._stopping = False
        devices = self.directory.all()
        if self.directory.dynamic or any(d.mode == "bthome" for d in devices):
            self._tasks.append(asyncio.create_task(self._scan_forever()))
        else:
            self.ready.set()
        for d in devices:
            if d.mode == "gatt":
                self._tasks.append(asyncio.create_task(self.gatt.run(d)))
        try:
            if self._tasks:
                await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            await self._stop_scanner()

    def pause_intake(self) -> None:
        """Take no more adverts or GATT frames (shutdown; a radio cannot be paused, and nothing
        not yet accepted is owed to a device: it repeats its adverts)."""
        self._stopping = True

    def resume_intake(self) -> None:
        self._stopping = False

    def health(self) -> Health:
        devices = self.directory.all()
        parts = {
            d.device_id: Health("up" if d.device_id in self.connected else "down", {"mac": d.mac})
            for d in devices
            if d.mode == "gatt"
        }
        scanning = self.scanning.is_set()
        wants_scan = self.directory.dynamic or any(d.mode == "bthome" for d in devices)
        state: State = "up"
        if wants_scan and not scanning:
            state = "down"
        elif any(p.state != "up" for p in parts.values()):
            state = "degraded"
        detail: dict[str, Detail] = {
            "scanning": scanning,
            "scanning_mode": self.scanning_mode,
            "connected": len(self.connected),
            "frames": self.received,
        }
        return Health(state, detail, parts)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop scanning and close every connection; safe to call twice."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self._stop_scanner()
        await self.gatt_link.close(grace)
        for t in self._tasks:
            t.cancel()

    # -- scanning ------------------------------------------------------------------------
    async def _scan_forever(self) -> None:
        backoff = Backoff(1.0, 60.0, jitter=0.0, reset_after=math.inf)
        while not self._stopping:
            try:
                await self._start_scanner()
            except Exception as exc:  # the GATT sessions carry on meanwhile
                if isinstance(exc, BleUnavailable):
                    self.metrics.inc("ble_unavailable")
                    key, name = ("ble", "unavailable"), "ble_unavailable"
                else:
                    self.metrics.inc("ble_scanner_failures")
                    key, name = ("ble", "scanner"), "ble_scanner_failed"
                delay = backoff.next_delay()
                self._rl.event(key, name, logging.ERROR, error=str(exc)[:400], retry_s=delay)
                self.ready.set()
                await asyncio.sleep(delay)
                continue
            backoff.succeeded()
            self.ready.set()
            self._restart.clear()
            self._arm_watchdog()
            await self._restart.wait()
            await self._stop_scanner()
            self.metrics.inc("ble_scanner_restarts")
            event(
                self.log,
                "ble_scanner_restart",
                logging.WARNING,
                silent_s=f"{self.cfg.watchdog_s:g}",
                adapter=self.cfg.adapter or "default",
            )

    async def _start_scanner(self) -> None:
        modes: tuple[Literal["passive", "active"], ...] = (
            ("passive", "active") if self.cfg.scanning_mode == "auto" else (self.cfg.scanning_mode,)
        )
        kwargs: dict[str, Any] = {}
        if self.cfg.adapter:
            kwargs["adapter"] = self.cfg.adapter
        for mode in modes:
            # BlueZ scans passively only through an advertisement monitor with patterns; this
            # one lets the controller pass BTHome service data (16-bit UUID 0xFCD2) only.
            bluez: dict[str, Any] = (
                {"or_patterns": [(0, 0x16, b"\xd2\xfc")]} if mode == "passive" else {}
            )
            try:
                scanner = BleakScanner(
                    self._on_advert,
                    None,
                    mode,
                    bluez=bluez,  # type: ignore[arg-type]
                    backend=self.backend.scanner,
                    **kwargs,
                )
                await scanner.start()
            except Exception as exc:
                if _unavailable(exc):
                    raise BleUnavailable(
                        f"BLE needs BlueZ reachable over the system D-Bus: "
                        f"{type(exc).__name__}: {exc}",
                        fix=INSTALL_HINT,
                    ) from exc
                if mode == "passive" and len(modes) > 1:
                    event(self.log, "ble_passive_unsupported", error=str(exc)[:200])
                    continue
                raise
            self._scanner = scanner
            self.scanning_mode = mode
            self._last_advert = asyncio.get_running_loop().time()
            self.scanning.set()
            event(
                self.log,
                "ble_scanning",
                mode=mode,
                adapter=self.cfg.adapter or "default",
                watchdog_s=f"{self.cfg.watchdog_s:g}",
            )
            return

    async def _stop_scanner(self) -> None:
        self.scanning.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(scanner.stop(), 5)

    def _arm_watchdog(self) -> None:
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_at(self._last_advert + self.cfg.watchdog_s, self._check_silence)

    def _check_silence(self) -> None:
        """A scanner that hears nothing for `watchdog` seconds is restarted (adapters and
        BlueZ sometimes stop reporting without an error)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_advert >= self.cfg.watchdog_s:
            self._watchdog = None
            self._restart.set()
        else:
            self._arm_watchdog()

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_advert = asyncio.get_running_loop().time()
        data = adv.service_data.get(BTHOME_SERVICE_UUID)
        if data is None:
            return
        self._adverts += 1
        mac = device.address.upper()
        dev = self.directory.by_mac(mac)
        if dev is None and len(data) >= 7 and data[0] & FLAG_MAC_INCLUDED:
            # A device on a random address names its identity address in the payload.
            mac = ":".join(f"{b:02X}" for b in data[6:0:-1])
            dev = self.directory.by_mac(mac)
        if dev is None or dev.mode != "bthome":
            self.metrics.inc("ble_adverts_ignored")
            return
        try:
            self.handle_bthome(dev, mac_bytes(mac), bytes(data))
        except ValueError:  # an address that is not a MAC (other platforms)
            self.metrics.inc("ble_adverts_ignored")

    def handle_bthome(self, dev: BleDevice, mac: bytes, data: bytes) -> None:
        """One BTHome service-data payload from a known device -> an arrival (or a reason)."""
        state = self._state.get(dev.device_id)
        if state is None:
            state = self._state[dev.device_id] = _AdvertState()
        encrypted = bool(data and data[0] & FLAG_ENCRYPTED)
        if encrypted and data == state.last_raw:
            self.metrics.inc("ble_duplicates")  # the same advert, repeated by the radio
            return
        if dev.bindkey is not None and not encrypted:
            self.pipeline.reject("ble", dev.device_id, "downgrade", "plaintext from a keyed device")
            return
        try:
            pkt = parse_bthome(data, mac=mac, bindkey=dev.bindkey)
        except FrameError as exc:
            if encrypted:
                state.last_raw = data  # its repeats are not decrypted and counted again
            self.pipeline.reject("ble", dev.device_id, exc.reason, exc.detail)
            return
        if pkt.unknown_object_id is not None:
            self.metrics.inc("bthome_unknown_objects")
        now = time.monotonic()
        verified: AuthMethod | None
        if pkt.counter is not None:
            state.last_raw = data
            if pkt.counter == state.last_counter:
                self.metrics.inc("ble_duplicates")
                return
            state.last_counter = counter = pkt.counter
            verified = AuthMethod.BTHOME
        else:
            if pkt.packet_id is not None:
                if pkt.packet_id == state.last_packet_id:
                    self.metrics.inc("ble_duplicates")
                    return
            elif data == state.last_raw and now - state.last_plain_at < self.cfg.plain_repeat_s:
                self.metrics.inc("ble_duplicates")
                return
            state.last_packet_id = pkt.packet_id
            state.last_raw, state.last_plain_at = data, now
            counter = self._gateway_counter(dev.device_id, state)
            verified = None
        if not pkt.values:
            self.metrics.inc("ble_adverts_without_values")
            return
        if len(pkt.values) > self.cfg.max_values_per_frame:
            self.pipeline.reject(
                "ble", dev.device_id, "too_many_values", f"{len(pkt.values)} values in one advert"
            )
            return
        values = tuple(SensorValue(v.name, v.value, v.exponent, v.unit) for v in pkt.values)
        frame = DeviceFrame(None, counter, pkt.timestamp, values, None, data)
        self._offer(Arrival(frame, dev.device_id, Transport.BLE, "ble", verified=verified))

    def _gateway_counter(self, device_id: str, state: _AdvertState) -> int:
        """Plaintext BTHome carries no counter: the gateway assigns one that only grows, also
        across restarts (microseconds of Unix time, and above anything journaled)."""
        journaled = self.pipeline.last_counter(
            counter_key(device_id, Transport.BLE, AuthMethod.ALLOWLIST)
        )
        floor = max(state.last_assigned, journaled or 0)
        state.last_assigned = max(floor + 1, time.time_ns() // 1000)
        return state.last_assigned

    def _offer(self, arrival: Arrival) -> None:
        if self._paused or self._stopping:
            # A radio cannot be paused: while the pipeline is over its bound, adverts are not
            # taken (never accepted, so nothing accepted is lost); devices repeat them anyway.
            self.metrics.inc("ble_dropped_backpressure")
            return
        if not self.pipeline.offer(arrival):
            self._paused = True
            self.metrics.inc("source_paused", source="ble")
            asyncio.get_running_loop().create_task(self._resume_when_space())

    async def _resume_when_space(self) -> None:
        try:
            await self.pipeline.wait_for_space()
        finally:
            self._paused = False


__all__ = ["BleBackend", "BleSource"]
