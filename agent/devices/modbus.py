"""Modbus source (pymodbus client): polls RTU buses and TCP devices by their register maps.

One task per line: an RS-485 bus is half-duplex, so its devices are polled in turn; each TCP
endpoint is a line of its own, so TCP devices are polled in parallel. A device that fails
(timeout, CRC, exception response, garbage) is counted by kind, logged once, and polled less
often (its own backoff); the other devices on the line keep their schedule. Decoding is the
pure codec's (agent/devices/codecs/modbus.py); this module does I/O and bookkeeping only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from agent.backoff import Backoff
from agent.component import Detail, Health, State
from agent.config.sources.modbus import ModbusBusConfig, ModbusDeviceConfig, ModbusSourceConfig
from agent.devices.codecs.modbus import (
    Point,
    ReadRequest,
    Table,
    classify_rtu_garbage,
    decode_response,
    plan_requests,
)
from agent.errors import FrameError, RejectedReading
from agent.frame import DeviceFrame, SensorValue, counter_key
from agent.logs import RateLimitedLog, event
from agent.metrics import Metrics
from agent.model import AuthMethod, Transport
from agent.pipeline import Arrival

# Exception responses by code (Modbus Application Protocol 1.1b3, section 7), as fault kinds.
EXCEPTION_KINDS = {
    1: "illegal_function",
    2: "illegal_address",
    3: "illegal_value",
    4: "device_failure",
    5: "acknowledge",
    6: "device_busy",
    8: "memory_parity",
    10: "gateway_path_unavailable",
    11: "gateway_no_response",
}
RTU_QUIET_CHARS = 3.5  # the standard's inter-frame silence, in character times
RTU_QUIET_S = 0.02  # plus USB adapters' and the kernel's own latency
LINE_BACKOFF_MAX = 30.0  # s: reopening a port or reconnecting a TCP endpoint


class Intake(Protocol):
    """What the source needs of the pipeline (agent.pipeline.Pipeline implements it)."""

    def offer(self, arrival: Arrival) -> bool: ...

    async def wait_for_space(self) -> None: ...

    def reject(self, source: str, device: str, reason: str, detail: str) -> None: ...

    def last_counter(self, key: str) -> int | None: ...


class ModbusGate:
    """The pipeline's check for Modbus arrivals: the device must be one of [sources.modbus].
    Modbus has no authentication, so an accepted reading has the lowest assurance."""

    def __init__(self, device_ids: Iterable[str]) -> None:
        self.device_ids = frozenset(device_ids)

    def check(self, arrival: Arrival) -> AuthMethod:
        if arrival.device_id not in self.device_ids:
            raise RejectedReading(
                "unknown_device", f"{arrival.device_id!r} is not in [sources.modbus] devices"
            )
        return AuthMethod.ALLOWLIST

    def admit(self, arrival: Arrival, auth: AuthMethod) -> None:
        """No budget: the gateway polls a Modbus device at its configured intervals."""


@dataclass
class PollGroup:
    """The reads of one device that share a poll interval."""

    interval_s: float
    requests: list[ReadRequest]
    due: float = 0.0  # monotonic


@dataclass
class DeviceState:
    cfg: ModbusDeviceConfig
    groups: list[PollGroup]
    backoff: Backoff
    polls: int = 0
    failing: bool = False
    partial: bool = False  # the last poll read some values and failed on others
    last_poll: float | None = None  # unix time of the last poll that read something
    failed_since: float | None = None
    counter: int = -1  # the last counter given to a frame (gateway milliseconds)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def state(self) -> State:
        if self.failing:
            return "degraded" if self.partial else "down"
        return "up" if self.last_poll is not None else "starting"


@dataclass
class Line:
    """An RS-485 bus or a TCP endpoint, and the devices polled over it, one at a time."""

    name: str
    devices: list[DeviceState]
    bus: ModbusBusConfig | None = None
    connected: bool = False
    opened: int = 0
    received: list[bytes] = field(default_factory=list)  # bytes since the last request


def poll_groups(dev: ModbusDeviceConfig) -> list[PollGroup]:
    """The device's reads, grouped by interval, each group planned within the read limits."""
    points: dict[float, list[Point]] = {}
    for r in dev.registers:
        points.setdefault(r.interval_s, []).append(r.point)
    return [
        PollGroup(
            interval, plan_requests(pts, max_registers=dev.max_registers, max_gap=dev.max_gap)
        )
        for interval, pts in sorted(points.items())
    ]


def _next_due(due: float, interval: float, now: float) -> float:
    """The next slot of a schedule started at `due`, skipping the ones already missed (a slow
    line keeps each device's phase instead of polling it back to back to catch up)."""
    return due + interval * max(1, math.ceil((now - due) / interval))


class ModbusSource:
    """The `modbus` Source: one polling task per line, readings offered to the pipeline.

    Modbus is pull: pausing intake simply stops polling (the device keeps its registers), and
    a full pipeline delays the line's next poll until it has room again.
    """

    name = "modbus"

    def __init__(
        self,
        cfg: ModbusSourceConfig,
        *,
        pipeline: Intake,
        metrics: Metrics,
        logger: logging.Logger | None = None,
    ) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.metrics = metrics
        self.log = logger or logging.getLogger("agent.devices.modbus")
        self._rl = RateLimitedLog(self.log)
        self.ready = asyncio.Event()
        self._stopped = asyncio.Event()
        self._intake = asyncio.Event()
        self._intake.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._ending = False  # run() is ending: the line tasks finish
        buses = {b.name: b for b in cfg.buses}
        lines: dict[str, Line] = {}
        for d in cfg.devices:
            fastest = min(r.interval_s for r in d.registers)
            st = DeviceState(
                d,
                poll_groups(d),
                # A first failure is retried at the usual interval (one lost answer is common
                # on RS-485); after that a device that does not answer is asked less often.
                Backoff(fastest, max(fastest, cfg.backoff_max_s), jitter=0.2),
            )
            bus = buses[d.bus] if d.bus is not None else None
            lines.setdefault(d.line, Line(d.line, [], bus)).devices.append(st)
        self.lines = list(lines.values())
        self.devices = {st.cfg.device_id: st for ln in self.lines for st in ln.devices}
        self.registers_read = 0
        self.polls = 0
        metrics.gauge("modbus_registers_read", lambda: float(self.registers_read))

    # -- the Source interface -------------------------------------------------------------
    async def run(self) -> None:
        self._stopped.clear()
        self._ending = False
        self._tasks = [asyncio.create_task(self._run_line(ln)) for ln in self.lines]
        self.ready.set()
        stop = asyncio.create_task(self._stopped.wait())
        try:
            done, _ = await asyncio.wait([*self._tasks, stop], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop:
                    t.result()  # a line task only ends by a bug: let the supervisor restart us
        finally:
            # Lines also check the flag: on Python 3.11 a cancellation that arrives as a
            # pymodbus answer completes can be lost inside asyncio.wait_for.
            self._ending = True
            stop.cancel()
            for t in self._tasks:
                t.cancel()
            await asyncio.wait([stop, *self._tasks], timeout=2.0)

    async def stop(self, grace: float) -> None:
        self._stopped.set()
        self._ending = True
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def pause_intake(self) -> None:
        self._intake.clear()

    def resume_intake(self) -> None:
        self._intake.set()

    def health(self) -> Health:
        parts = {d: self._device_health(st) for d, st in self.devices.items()}
        states = [p.state for p in parts.values()]
        state: State
        if self._stopped.is_set():
            state = "stopped"
        elif all(s == "up" for s in states):
            state = "up"
        elif all(s == "starting" for s in states):
            state = "starting"
        elif all(s == "down" for s in states):
            state = "down"
        else:
            state = "degraded"
        # "configured": the health document's own `devices` counts those heard
        detail: dict[str, Detail] = {
            "configured": len(self.devices),
            "lines_up": sum(ln.connected for ln in self.lines),
            "lines": len(self.lines),
            "polls": self.polls,
            "registers_read": self.registers_read,
            "paused": not self._intake.is_set(),
        }
        return Health(state, detail, parts)

    def _device_health(self, st: DeviceState) -> Health:
        detail: dict[str, Detail] = {
            "line": st.cfg.line,
            "unit": st.cfg.unit,
            "polls": st.polls,
            "last_poll": int(st.last_poll) if st.last_poll is not None else None,
            "errors": sum(st.errors.values()),
        }
        detail.update({f"errors_{k}": v for k, v in sorted(st.errors.items())})
        return Health(st.state, detail)

    # -- lines ----------------------------------------------------------------------------
    def _client(self, line: Line) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        def trace(sending: bool, data: bytes) -> bytes:
            if not sending:
                line.received.append(bytes(data))  # what came back (pymodbus keeps no record)
            return data

        if line.bus is not None:
            b = line.bus
            return AsyncModbusSerialClient(
                str(b.port),
                framer=FramerType.RTU,
                baudrate=b.baud,
                bytesize=b.bytesize,
                parity=b.parity,
                stopbits=b.stopbits,
                timeout=b.timeout_s,
                retries=0,  # the source retries on its own schedule
                reconnect_delay=0,  # and reopens the line itself, with its backoff
                trace_packet=trace,
                name=line.name,
            )
        d = line.devices[0].cfg
        assert d.host is not None
        return AsyncModbusTcpClient(
            d.host,
            port=d.port,
            timeout=max(st.cfg.timeout_s for st in line.devices),
            retries=0,
            reconnect_delay=0,
            trace_packet=trace,
            name=line.name,
        )

    async def _run_line(self, line: Line) -> None:
        backoff = Backoff(0.5, LINE_BACKOFF_MAX)
        lost = True  # a loss not yet counted: at start, and after the line worked
        while not self._ending:
            client = self._client(line)
            try:
                if not await client.connect():
                    what = f"cannot open {line.bus.port}" if line.bus else "cannot connect"
                    self._line_down(line, what, backoff.current, count=lost)
                    lost = False  # further failed attempts are the same outage
                else:
                    line.connected = True
                    line.opened += 1
                    self.metrics.inc("modbus_line_opened", line=line.name)
                    event(self.log, "modbus_line_up", line=line.name, devices=len(line.devices))
                    await self._poll_line(line, client)
                    self._line_down(line, "connection lost", backoff.current, count=True)
                    lost = False
            finally:
                line.connected = False
                client.close()
            await backoff.wait()

    def _line_down(self, line: Line, why: str, retry_in: float, *, count: bool) -> None:
        """The port could not be opened or the connection dropped: every device on the line
        counts one `disconnected` fault per outage."""
        self.metrics.inc("modbus_line_down", line=line.name)
        self._rl.event(
            ("line", line.name),
            "modbus_line_down",
            logging.WARNING,
            line=line.name,
            reason=why,
            retry_in=f"{retry_in:.1f}s",
        )
        if not count:
            return
        for st in line.devices:
            self._count(st, "disconnected")
            st.failing = True
            st.partial = False
            st.failed_since = st.failed_since or time.monotonic()

    async def _poll_line(
        self, line: Line, client: AsyncModbusSerialClient | AsyncModbusTcpClient
    ) -> None:
        """Poll the line's devices in order of their next due time until the line is lost."""
        now = time.monotonic()
        for st in line.devices:
            for g in st.groups:
                g.due = max(g.due, now) if g.due else now
        while client.connected and not self._ending:
            if not self._intake.is_set():
                await self._intake.wait()
                continue
            st, group = min(
                ((st, g) for st in line.devices for g in st.groups), key=lambda sg: sg[1].due
            )
            delay = group.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # re-check pause and the line before polling
            await self._poll(line, client, st, group)

    # -- one poll -------------------------------------------------------------------------
    async def _read(
        self, client: AsyncModbusSerialClient | AsyncModbusTcpClient, req: ReadRequest, unit: int
    ) -> ModbusPDU:
        if req.table is Table.HOLDING:
            call = client.read_holding_registers(req.address, count=req.count, device_id=unit)
        elif req.table is Table.INPUT:
            call = client.read_input_registers(req.address, count=req.count, device_id=unit)
        elif req.table is Table.COIL:
            call = client.read_coils(req.address, count=req.count, device_id=unit)
        else:
            call = client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
        return await call

    def _silence(self, line: Line, unit: int) -> str:
        """Why a request got no valid answer: nothing came back (`timeout`), or what did."""
        got = line.received[-1] if line.received else b""
        if not got:
            return "timeout"
        if line.bus is not None:
            return classify_rtu_garbage(got, unit)
        # Modbus TCP: the unit id is the 7th byte of the MBAP header.
        return "wrong_unit" if len(got) >= 7 and got[6] != unit else "bad_response"

    async def _poll(
        self,
        line: Line,
        client: AsyncModbusSerialClient | AsyncModbusTcpClient,
        st: DeviceState,
        group: PollGroup,
    ) -> None:
        dev = st.cfg
        values: list[SensorValue] = []
        fault: tuple[str, str] | None = None
        answered = False
        for req in group.requests:
            where = f"{req.table} {req.address}+{req.count}"
            line.received.clear()
            try:
                rr = await self._read(client, req, dev.unit)
            except ConnectionException as exc:
                fault = ("disconnected", str(exc)[:120])
                break
            except ModbusException:
                # No valid answer in time: the device is silent, or what came back was
                # corrupt or someone else's. Later reads of this poll would fare no better.
                fault = (self._silence(line, dev.unit), where)
                if line.bus is not None:
                    # Let a late or babbling answer end before the next request, so that
                    # its tail is discarded instead of corrupting another device's answer.
                    await asyncio.sleep(RTU_QUIET_CHARS * 11 / line.bus.baud + RTU_QUIET_S)
                break
            except Exception as exc:  # a hostile answer that pymodbus could not take apart
                fault = ("bad_response", f"{where}: {type(exc).__name__}")
                break
            finally:
                line.received.clear()
            answered = True
            if rr.isError():
                code = rr.exception_code
                fault = (
                    EXCEPTION_KINDS.get(code, f"exception_{code}"),
                    f"{where}: exception {code}",
                )
                continue
            if rr.function_code != req.table.function_code:
                fault = ("bad_response", f"{where}: answered function {rr.function_code}")
                continue
            data: Sequence[int] | Sequence[bool] = rr.bits if req.table.is_bits else rr.registers
            try:
                decoded, bad = decode_response(req, data)
            except FrameError as exc:
                fault = (exc.reason, exc.detail)
                continue
            for p, err in bad:
                self.pipeline.reject(
                    "modbus", dev.device_id, err.reason, f"{p.sensor}: {err.detail}"
                )
            values.extend(decoded)
            self.registers_read += req.count
        st.polls += 1
        self.polls += 1
        st.partial = bool(values) and fault is not None
        room = True
        if values:
            room = self._offer(st, values)
        now = time.monotonic()
        if fault is None:
            if st.failing:
                event(
                    self.log,
                    "modbus_recovered",
                    device=dev.device_id,
                    line=line.name,
                    down_s=f"{now - (st.failed_since or now):.1f}",
                )
            st.failing = False
            st.failed_since = None
            st.backoff.succeeded()
            group.due = _next_due(group.due, group.interval_s, now)
        else:
            kind, detail = fault
            self._count(st, kind)
            # A device that answered keeps its schedule (a refused range is a config matter);
            # one that did not is asked less often, so it costs the line less.
            wait = (
                group.interval_s
                if answered and kind != "device_busy"
                else max(group.interval_s, st.backoff.next_delay())
            )
            group.due = now + wait
            fields: dict[str, Any] = {
                "device": dev.device_id,
                "line": line.name,
                "unit": dev.unit,
                "kind": kind,
                "detail": detail,
                "retry_in": f"{wait:.1f}s",
            }
            if not st.failing:
                st.failing = True
                st.failed_since = now
                event(self.log, "modbus_fault", logging.WARNING, **fields)
            else:
                self._rl.event((dev.device_id, kind), "modbus_fault", logging.WARNING, **fields)
        if not room:
            self.metrics.inc("source_paused", source="modbus")
            await self.pipeline.wait_for_space()

    def _count(self, st: DeviceState, kind: str) -> None:
        st.errors[kind] += 1
        self.metrics.inc("modbus_faults", device=st.cfg.device_id, kind=kind)

    def _offer(self, st: DeviceState, values: list[SensorValue]) -> bool:
        device = st.cfg.device_id
        if st.counter < 0:
            key = counter_key(device, Transport.MODBUS, AuthMethod.ALLOWLIST)
            st.counter = self.pipeline.last_counter(key) or 0
        # Modbus has no frame counter: the gateway numbers the polls, in milliseconds of its
        # clock and never backwards (a restart continues above the journaled counter).
        st.counter = max(st.counter + 1, time.time_ns() // 1_000_000)
        wall = time.time()
        st.last_poll = wall
        frame = DeviceFrame(None, st.counter, int(wall), tuple(values), None, b"")
        self.metrics.inc("modbus_polls", device=device)
        return self.pipeline.offer(Arrival(frame, device, Transport.MODBUS, "modbus"))


# pymodbus logs every timeout and stray frame at ERROR; the source logs each fault once, by
# device and kind, so the library's own lines are kept out of the agent's log.
logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)

__all__ = ["EXCEPTION_KINDS", "ModbusGate", "ModbusSource", "poll_groups"]
