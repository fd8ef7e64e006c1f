"""BLE source: one long-lived bleak scanner for BTHome v2 adverts, and GATT connections to
peripherals that notify device frames. Parsing lives in codecs/bthome.py and codecs/frame.py.

The same code runs with BlueZ on a Raspberry Pi and with a Bumble-backed bleak backend in tests:
only the `BleBackend` differs (docs/ble.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from bleak import BleakClient, BleakScanner
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakDBusError, BleakError

from agent.backoff import Backoff
from agent.component import Detail, Health, State
from agent.config import BleDeviceConfig, BleSourceConfig
from agent.devices.codecs.bthome import (
    BTHOME_SERVICE_UUID,
    FLAG_ENCRYPTED,
    FLAG_MAC_INCLUDED,
    mac_bytes,
    parse_bthome,
)
from agent.devices.codecs.frame import parse_frame
from agent.devices.gate import EnrollmentGate
from agent.devices.registry import DeviceStatus
from agent.errors import BleUnavailable, FrameError, KeyFileError, RejectedReading
from agent.frame import DeviceFrame, SensorValue, counter_key
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival, Pipeline
from agent.secrets import check_secret_mode

INSTALL_HINT = (
    "sudo apt-get install bluez dbus && sudo systemctl enable --now bluetooth "
    "(in a container, mount /run/dbus/system_bus_socket); or set [sources.ble] enabled = false"
)


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
        self._slots = asyncio.Semaphore(cfg.max_connections)
        self._clients: set[BleakClient] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.received = 0
        self.connected: set[str] = set()  # device ids with a live GATT connection
        metrics.gauge("frames_received_ble", lambda: float(self.received))

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
                self._tasks.append(asyncio.create_task(self._gatt_forever(d)))
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
        for client in list(self._clients):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), grace)
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
        self.received += 1
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

    # -- GATT ----------------------------------------------------------------------------
    async def _gatt_forever(self, dev: BleDevice) -> None:
        backoff = Backoff(1.0, self.cfg.reconnect_max_s, jitter=0.5, reset_after=math.inf)
        while not self._stopping:
            had_connection = False
            async with self._slots:  # adapters have few connection slots
                try:
                    had_connection = await self._gatt_session(dev)
                except Exception as exc:  # one device's trouble never stops the others
                    self.metrics.inc("gatt_sessions_failed")
                    self._rl.event(
                        (dev.device_id, "gatt"),
                        "gatt_unreachable",
                        device=dev.device_id,
                        mac=dev.mac,
                        error=f"{type(exc).__name__}: {exc}"[:200],
                    )
            if had_connection:
                backoff.succeeded()
            await backoff.wait()

    async def _connect(self, dev: BleDevice, disconnected: asyncio.Event) -> BleakClient:
        """A fresh client per attempt (a failed BlueZ connection leaves state behind), at most
        `connect_attempts` attempts with a short backoff between them."""
        kwargs: dict[str, Any] = {}
        if self.cfg.adapter:
            kwargs["adapter"] = self.cfg.adapter
        last: BaseException | None = None
        backoff = Backoff(0.5, 2.0, jitter=0.0, reset_after=math.inf)
        for attempt in range(1, self.cfg.connect_attempts + 1):
            client = BleakClient(
                dev.mac,
                lambda _c: disconnected.set(),
                timeout=self.cfg.connect_timeout_s,
                backend=self.backend.client,
                **kwargs,
            )
            try:
                await asyncio.wait_for(client.connect(), self.cfg.connect_timeout_s + 1)
                return client
            except (BleakError, OSError, TimeoutError) as exc:
                last = exc
                self.metrics.inc("gatt_connect_failures")
                with contextlib.suppress(Exception):
                    await client.disconnect()
                if attempt < self.cfg.connect_attempts:
                    await backoff.wait()
        assert last is not None
        raise last

    async def _gatt_session(self, dev: BleDevice) -> bool:
        disconnected = asyncio.Event()
        client = await self._connect(dev, disconnected)
        self._clients.add(client)
        self.connected.add(dev.device_id)
        self.metrics.inc("gatt_connects")
        event(self.log, "gatt_connected", device=dev.device_id, mac=dev.mac)
        buffer = bytearray()

        def on_notify(_char: Any, data: bytearray) -> None:
            self._on_gatt_data(dev, buffer, data)

        try:
            assert dev.characteristic is not None
            await client.start_notify(dev.characteristic, on_notify)
            await disconnected.wait()
        finally:
            self.connected.discard(dev.device_id)
            self._clients.discard(client)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2)
            event(self.log, "gatt_disconnected", device=dev.device_id, mac=dev.mac)
        return True

    def _on_gatt_data(self, dev: BleDevice, buffer: bytearray, data: bytearray) -> None:
        """Notifications carry newline-terminated JSON device frames, split to the MTU."""
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                self._gatt_frame(dev, line)
        if len(buffer) > self.cfg.max_payload:
            self.pipeline.reject(
                "ble", dev.device_id, "oversize", f"no newline within {self.cfg.max_payload} bytes"
            )
            buffer.clear()

    def _gatt_frame(self, dev: BleDevice, line: bytes) -> None:
        self.received += 1
        try:
            frame = parse_frame(
                line, max_bytes=self.cfg.max_payload, max_values=self.cfg.max_values_per_frame
            )
        except FrameError as exc:
            self.pipeline.reject("ble", dev.device_id, exc.reason, exc.detail)
            return
        if frame.device_id is not None and frame.device_id != dev.device_id:
            self.pipeline.reject(
                "ble",
                dev.device_id,
                "device_mismatch",
                f"frame id {frame.device_id!r} from {dev.mac}",
            )
            return
        self._offer(Arrival(frame, dev.device_id, Transport.BLE, "ble"))


__all__ = [
    "BleBackend",
    "BleDevice",
    "BleDeviceDirectory",
    "BleGate",
    "BleSource",
    "ConfiguredBleDevices",
    "read_bindkey",
]
