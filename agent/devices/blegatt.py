"""GATT connections to BLE peripherals: connecting with bounded attempts on the adapter's few
connection slots, and the sessions of peripherals that notify newline-terminated device frames
(parsed by codecs/frame.py, handed to the BLE source's intake)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any

from bleak import BleakClient
from bleak.exc import BleakError

from agent.backoff import Backoff
from agent.config import BleSourceConfig
from agent.devices.bledevices import BleDevice
from agent.devices.codecs.frame import parse_frame
from agent.errors import FrameError
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import Transport
from agent.pipeline import Arrival, Pipeline


class GattLink:
    """The adapter's GATT side: at most `max_connections` at a time, every client known so
    that `close()` disconnects them all."""

    def __init__(
        self,
        cfg: BleSourceConfig,
        metrics: Metrics,
        client_backend: Any,
        log: logging.Logger,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.client_backend = client_backend
        self.log = log
        self.rl = RateLimitedLog(log)
        self.slots = asyncio.Semaphore(cfg.max_connections)
        self.clients: set[BleakClient] = set()

    async def connect(self, dev: BleDevice, disconnected: asyncio.Event) -> BleakClient:
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
                backend=self.client_backend,
                **kwargs,
            )
            try:
                await asyncio.wait_for(client.connect(), self.cfg.connect_timeout_s + 1)
                self.clients.add(client)
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

    async def release(self, client: BleakClient) -> None:
        self.clients.discard(client)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), 2)

    async def close(self, grace: float) -> None:
        for client in list(self.clients):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), grace)


class GattFrames:
    """The sessions of [sources.ble.devices] in mode gatt: connect, subscribe to the notify
    characteristic, take frames until disconnected, reconnect with backoff; one device's
    trouble never stops another."""

    def __init__(
        self,
        link: GattLink,
        pipeline: Pipeline,
        offer: Callable[[Arrival], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.link = link
        self.cfg = link.cfg
        self.metrics = link.metrics
        self.log = link.log
        self.pipeline = pipeline
        self.offer = offer
        self.stopping = stopping
        self.received = 0
        self.connected: set[str] = set()  # device ids with a live GATT connection

    async def run(self, dev: BleDevice) -> None:
        backoff = Backoff(1.0, self.cfg.reconnect_max_s, jitter=0.5, reset_after=math.inf)
        while not self.stopping():
            had_connection = False
            async with self.link.slots:  # adapters have few connection slots
                try:
                    had_connection = await self._session(dev)
                except Exception as exc:  # one device's trouble never stops the others
                    self.metrics.inc("gatt_sessions_failed")
                    self.link.rl.event(
                        (dev.device_id, "gatt"),
                        "gatt_unreachable",
                        device=dev.device_id,
                        mac=dev.mac,
                        error=f"{type(exc).__name__}: {exc}"[:200],
                    )
            if had_connection:
                backoff.succeeded()
            await backoff.wait()

    async def _session(self, dev: BleDevice) -> bool:
        disconnected = asyncio.Event()
        client = await self.link.connect(dev, disconnected)
        self.connected.add(dev.device_id)
        self.metrics.inc("gatt_connects")
        event(self.log, "gatt_connected", device=dev.device_id, mac=dev.mac)
        buffer = bytearray()

        def on_notify(_char: Any, data: bytearray) -> None:
            self._on_data(dev, buffer, data)

        try:
            assert dev.characteristic is not None
            await client.start_notify(dev.characteristic, on_notify)
            await disconnected.wait()
        finally:
            self.connected.discard(dev.device_id)
            await self.link.release(client)
            event(self.log, "gatt_disconnected", device=dev.device_id, mac=dev.mac)
        return True

    def _on_data(self, dev: BleDevice, buffer: bytearray, data: bytearray) -> None:
        """Notifications carry newline-terminated JSON device frames, split to the MTU."""
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                self._frame(dev, line)
        if len(buffer) > self.cfg.max_payload:
            self.pipeline.reject(
                "ble", dev.device_id, "oversize", f"no newline within {self.cfg.max_payload} bytes"
            )
            buffer.clear()

    def _frame(self, dev: BleDevice, line: bytes) -> None:
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
        self.offer(Arrival(frame, dev.device_id, Transport.BLE, "ble"))


__all__ = ["GattFrames", "GattLink"]
