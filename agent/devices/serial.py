"""Serial source (pyserial): reads framed lines and NMEA sentences from configured ports.

Each port has its own reader thread doing chunked blocking reads; parsing happens on the event
loop with the pure codecs. A port that fails (USB unplug) is closed and reopened with backoff;
one port's trouble never delays another.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import serial

from agent.backoff import Backoff
from agent.component import Health, State
from agent.config import SerialPortConfig, SerialSourceConfig
from agent.devices.codecs.frame import parse_frame
from agent.devices.codecs.nmea import parse_nmea
from agent.devices.codecs.serial_line import LineKind, LineSplitter, classify_line, frame_payload
from agent.errors import FrameError
from agent.frame import DeviceFrame
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import Transport
from agent.pipeline import Arrival, Pipeline

READ_TIMEOUT = 0.2  # s: how long a read waits for a first byte (bounds shutdown time)
GATHER = 0.005  # s: after the first byte, let a burst accumulate (115200 baud: ~58 bytes)
MAX_CHUNK = 65536
STABLE_AFTER = 5.0  # s: a port open this long resets the reopen backoff


@dataclass
class PortState:
    """What the source knows about one port between chunks."""

    cfg: SerialPortConfig
    splitter: LineSplitter
    gps_date: tuple[int, int, int] | None = None  # latest RMC date (GGA carries none)
    gps_seen_gga: bool = False  # GGA is the position source once a receiver sends it
    gps_counter: int = 0
    open: bool = False
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="serial")
    )


def read_chunk(port: serial.Serial) -> bytes:
    """Block (up to READ_TIMEOUT) for a first byte, then take everything waiting: a few system
    calls per burst instead of readline()'s one per byte. Runs in the port's thread."""
    first: bytes = port.read(1)
    if not first:
        return b""
    time.sleep(GATHER)
    n = port.in_waiting
    return first + bytes(port.read(min(n, MAX_CHUNK))) if n else first


class SerialSource:
    name = "serial"

    def __init__(
        self,
        cfg: SerialSourceConfig,
        *,
        pipeline: Pipeline,
        metrics: Metrics,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.devices.serial")
        self._rl = RateLimitedLog(self.log)
        self.ports = {str(p.path): PortState(p, LineSplitter(p.max_line)) for p in cfg.ports}
        self.ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.lines = 0
        metrics.gauge("serial_lines", lambda: float(self.lines))

    # -- parsing (on the loop) -----------------------------------------------------------
    def feed(self, st: PortState, chunk: bytes) -> bool:
        """Handle one chunk of a port; False when the pipeline asked the source to wait."""
        overlong = st.splitter.overlong
        room = True
        for line in st.splitter.feed(chunk):
            self.lines += 1
            room = self._line(st, line) and room
        if st.splitter.overlong != overlong:
            self._reject(st, st.cfg.device, "overlong", f"line longer than {st.cfg.max_line} B")
        return room

    def _reject(self, st: PortState, device: str | None, reason: str, detail: str) -> None:
        self.pipeline.reject("serial", device or "?", reason, f"port={st.cfg.path} {detail}")

    def _line(self, st: PortState, line: bytes) -> bool:
        kind = classify_line(line)
        if kind is LineKind.FRAME:
            return self._frame_line(st, line)
        if kind is LineKind.NMEA:
            return self._nmea_line(st, line)
        self._reject(st, st.cfg.device, "garbage", f"{len(line)} bytes that are no frame")
        return True

    def _frame_line(self, st: PortState, line: bytes) -> bool:
        cfg = st.cfg
        try:
            payload, skipped = frame_payload(line)
            frame = parse_frame(
                payload, max_bytes=cfg.max_line, max_values=self.cfg.max_values_per_frame
            )
        except FrameError as exc:
            self._reject(st, cfg.device, exc.reason, exc.detail)
            return True
        if skipped:
            self.metrics.inc("serial_resync", port=str(cfg.path))
        device = frame.device_id or cfg.device
        if device is None:
            self._reject(st, None, "missing_field", "frame has no id and the port no device")
            return True
        if device not in cfg.devices:
            self._reject(st, device, "unknown_device", f"{device!r} is not listed for this port")
            return True
        return self.pipeline.offer(Arrival(frame, device, Transport.SERIAL, "serial"))

    def _nmea_line(self, st: PortState, line: bytes) -> bool:
        gps = st.cfg.gps_device
        if gps is None:
            self._reject(st, None, "nmea_not_configured", "NMEA on a port without gps_device")
            return True
        try:
            pos = parse_nmea(line)
        except FrameError as exc:
            self._reject(st, gps, exc.reason, exc.detail)
            return True
        if pos is None:  # GSV, GSA, VTG...: valid, not used
            self.metrics.inc("nmea_ignored")
            return True
        if pos.kind == "RMC":
            st.gps_date = pos.date or st.gps_date
            if st.gps_seen_gga:
                return True  # GGA carries the same position and more
        else:
            st.gps_seen_gga = True
        values = pos.values()
        if not values:
            return True
        # NMEA has no frame counter: the gateway numbers the fixes, in milliseconds of its
        # clock and never backwards, so a restart continues above the journaled counter.
        st.gps_counter = max(st.gps_counter + 1, time.time_ns() // 1_000_000)
        frame = DeviceFrame(None, st.gps_counter, pos.timestamp(st.gps_date), values, None, line)
        return self.pipeline.offer(Arrival(frame, gps, Transport.SERIAL, "serial"))

    # -- I/O -----------------------------------------------------------------------------
    @staticmethod
    def _open(cfg: SerialPortConfig) -> serial.Serial:
        return serial.Serial(
            str(cfg.path),
            baudrate=cfg.baud,
            bytesize=cfg.bytesize,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            timeout=READ_TIMEOUT,
            exclusive=True,
        )

    async def _run_port(self, st: PortState) -> None:
        loop = asyncio.get_running_loop()
        ex = st.executor
        # Reopen delays from 0.1 s up to reopen_max, each jittered into [0.75 d, d].
        backoff = Backoff(0.1, self.cfg.reopen_max_s, jitter=0.25, reset_after=math.inf)
        while True:
            try:
                port = await loop.run_in_executor(ex, self._open, st.cfg)
            except (serial.SerialException, OSError, ValueError) as exc:
                delay = backoff.next_delay()
                self.metrics.inc("serial_open_failed", port=str(st.cfg.path))
                self._rl.event(
                    ("serial", str(st.cfg.path)),
                    "serial_open_failed",
                    port=str(st.cfg.path),
                    error=str(exc)[:160],
                    retry_in=f"{delay:.1f}s",
                )
                await asyncio.sleep(delay)
                continue
            opened_at = time.monotonic()
            st.splitter.reset()  # a partial line from before belongs to another stream
            st.open = True
            self.metrics.inc("serial_opened", port=str(st.cfg.path))
            event(self.log, "serial_opened", port=str(st.cfg.path), baud=st.cfg.baud)
            try:
                while True:
                    chunk = await loop.run_in_executor(ex, read_chunk, port)
                    if chunk and not self.feed(st, chunk):
                        self.metrics.inc("source_paused", source="serial")
                        await self.pipeline.wait_for_space()
            except (serial.SerialException, OSError) as exc:
                self.metrics.inc("serial_lost", port=str(st.cfg.path))
                event(
                    self.log,
                    "serial_lost",
                    logging.WARNING,
                    port=str(st.cfg.path),
                    error=str(exc)[:160],
                    partial_bytes=st.splitter.pending,
                )
            finally:
                st.open = False
                ex.submit(port.close)  # after the read in flight, in the same thread
            # A port that worked for a while comes back quickly; one that fails as soon as it
            # is opened (a flapping cable) backs off like one that cannot be opened.
            if time.monotonic() - opened_at > STABLE_AFTER:
                backoff.succeeded()
            await backoff.wait()

    async def run(self) -> None:
        self._tasks = [asyncio.create_task(self._run_port(st)) for st in self.ports.values()]
        self.ready.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self._cancel_ports()

    async def _cancel_ports(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def pause_intake(self) -> None:
        """Stop reading every port; what was read is in the pipeline's queue already."""
        for t in self._tasks:
            t.cancel()

    def resume_intake(self) -> None:
        """Ports are read again when the supervisor restarts run() (intake is paused only at
        shutdown; backpressure waits inside the read loop instead)."""

    async def stop(self, grace: float = 0.5) -> None:
        await self._cancel_ports()
        loop = asyncio.get_running_loop()
        for st in self.ports.values():  # each after the read in flight, in its own thread
            await loop.run_in_executor(None, st.executor.shutdown, True)

    def health(self) -> Health:
        parts = {
            path: Health("up" if st.open else "down", {"device": st.cfg.device})
            for path, st in self.ports.items()
        }
        open_ports = sum(1 for st in self.ports.values() if st.open)
        state: State = "up" if open_ports == len(parts) else "degraded" if open_ports else "down"
        return Health(state, {"ports_open": open_ports, "lines": self.lines}, parts)
